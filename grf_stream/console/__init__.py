"""The browser console: a page that streams a webcam, a microphone and typed phrases to a grf-stream
server and plots every prediction live (`python -m grf_stream.console`)."""
