"""The room's progress page: attendees by exercises, the one stuck longest first.

Everything an attendee sent is shown as text: HTML-escaped, and a control character (a terminal
escape, a NUL) as its ``\\x..`` escape, never acted on.

>>> shown('<b>Ann</b>\\x1b[31m')
'&lt;b&gt;Ann&lt;/b&gt;\\\\x1b[31m'
"""

from __future__ import annotations

import html
from datetime import datetime

from hybridchat.store.progress import Standing

REFRESH_SECONDS = 5


def shown(text: str) -> str:
    """``text`` safe to put in the page, with nothing of it hidden."""
    visible = "".join(c if c.isprintable() or c == " " else ascii(c)[1:-1] for c in text)
    return html.escape(visible)


def _minutes(since: datetime, now: datetime) -> int:
    return max(int((now - since).total_seconds() // 60), 0)


def board_html(standings: list[Standing], now: datetime) -> str:
    """The table: a row per attendee, a column per exercise anyone has checked."""
    if not standings:
        return "<p>No verdict yet: attendees' checker cells send one each time they run.</p>"
    exercises = sorted({s.exercise for s in standings})
    rows: dict[str, dict[str, Standing]] = {}
    for standing in standings:
        rows.setdefault(standing.attendee, {})[standing.exercise] = standing

    def stuck(attendee: str) -> int:
        return max((_minutes(s.since, now) for s in rows[attendee].values() if s.status == "hint"), default=-1)

    order = sorted(rows, key=lambda name: (-stuck(name), name.casefold()))
    head = "".join(f"<th>{shown(exercise)}</th>" for exercise in exercises)
    body = []
    for name in order:
        cells = []
        for exercise in exercises:
            found = rows[name].get(exercise)
            if found is None:
                cells.append("<td></td>")
            elif found.status == "ok":
                cells.append('<td class="ok">✅</td>')
            else:
                cells.append(f'<td class="hint">💡 {_minutes(found.since, now)} min'
                             f"<small>{shown(found.hint)}</small></td>")
        last = max(s.updated for s in rows[name].values())
        body.append(f"<tr><th>{shown(name)}</th>{''.join(cells)}<td>{_minutes(last, now)} min ago</td></tr>")
    return (f"<table><thead><tr><th>attendee</th>{head}<th>last verdict</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5rem}table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:.3rem .5rem;vertical-align:top;text-align:left}
td.ok{background:#eaf7ea;text-align:center}td.hint{background:#fff4e0;max-width:18rem}
small{display:block;color:#555;overflow-wrap:anywhere}#load{color:#333}"""


def page_html(board: str, load: str, nonce: str) -> str:
    """The whole page; its script fetches the board again every few seconds."""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>The room's progress</title>
<style>{_STYLE}</style></head><body><h1>The room's progress</h1>
<p id="load">{shown(load)}</p><div id="board">{board}</div>
<p><small>Updated every {REFRESH_SECONDS} s. 💡: the attendee's checker gave this hint, for so many
minutes; ✅: it passed.</small></p>
<script nonce="{nonce}">
setInterval(async () => {{
  const answer = await fetch("/progress/board", {{credentials: "same-origin"}});
  if (!answer.ok) return;
  const got = await answer.json();
  document.getElementById("board").innerHTML = got.board;
  document.getElementById("load").textContent = got.load;
}}, {REFRESH_SECONDS * 1000});
</script></body></html>"""


def login_html(said: str = "") -> str:
    note = f'<p role="alert">{shown(said)}</p>' if said else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in: the room's progress</title>
<style>{_STYLE}</style></head><body><h1>The room's progress</h1>{note}
<form method="post" action="/progress/login"><label>The instructor's key
<input type="password" name="key" autocomplete="current-password" autofocus></label>
<button type="submit">Sign in</button></form></body></html>"""
