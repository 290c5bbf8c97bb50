"""The status site: `checker web` and `checker report --html`.

data.py      reads the store as `checker report` does; keeps the last good read
views.py     the report's rows and JSON → what the pages display (filter, sort)
svg.py       the lag chart's geometry (drawn as inline SVG by a template)
render.py    Jinja2 (autoescape on) → HTML text
app.py       the aiohttp site and its server
templates/   the pages and the one stylesheet, inlined into each page
"""
