"""How every figure of a report is rendered to PNG bytes (one size of type, one resolution)."""

from __future__ import annotations

import io


def png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    # imported here: matplotlib is heavy and only needed to draw figures
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
