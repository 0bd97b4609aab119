"""The report's sections as Markdown, its figures linked beside it."""
import os
from pathlib import Path

from hw1.outputs import REPORT_MARK
from hw1.report.blocks import Code, Missing, Paragraph, Table


def markdown(sections, base):
    """The sections as Markdown; figure paths relative to the folder ``base`` of the Markdown file.

    The first line is :data:`hw1.outputs.REPORT_MARK` (an HTML comment, not shown), by which a
    later report knows the file as one it may replace."""
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = [REPORT_MARK]
    for i, s in enumerate(sections):
        out.append(("# " if i == 0 else "## ") + s.title)
        for b in s.blocks:
            if isinstance(b, Paragraph):
                out.append(b.text)
            elif isinstance(b, Code):
                out.append(f"```bash\n{b.text}\n```")  # unfolded: a Markdown viewer scrolls, and it copies as is
            elif isinstance(b, Table):
                lines = ["| " + " | ".join(cell(c) for c in b.header) + " |",
                         "|" + "---|" * len(b.header)]
                lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in b.rows]
                out.append("\n".join(lines))
            elif isinstance(b, Missing):
                text = f"> **Missing:** {b.what}"
                if b.command:
                    text += f"\n>\n> ```bash\n> {b.command}\n> ```"
                out.append(text)
            else:
                rel = Path(os.path.relpath(b.path, base)).as_posix()
                out.append(f"![{cell(s.title)}]({rel})\n\n*{b.caption}*")
    return "\n\n".join(out) + "\n"
