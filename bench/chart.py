"""Bar charts for the benchmarks' PNG output (matplotlib, when the python running
the benchmark has it; otherwise a note on stderr and no chart).

    panels: a list of (title, labels, series), series a list of (name, values);
            a value of None is drawn as a gap.
"""
import sys


def bars(path, panels, note=None):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is missing in %s; no chart (pip install matplotlib)" % sys.executable,
              file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (title, labels, series) in zip(axes[0], panels):
        xs = range(len(labels))
        width = 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(series):
            off = (i - (len(series) - 1) / 2) * width
            ax.bar([x + off for x in xs], [v if v is not None else 0 for v in values], width, label=name)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    if note:
        fig.suptitle(note, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
