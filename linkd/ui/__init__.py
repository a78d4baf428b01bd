"""The topology page the daemon serves at /ui/ (static files: no build step, no CDN)."""
