"""`cnnlab serve`: the web page and JSON API (app.py), with the page's own files (page.html, static/)."""
