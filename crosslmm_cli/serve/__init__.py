"""`crosslmm serve`: an OpenAI-compatible chat-completions server that decodes and encodes each
video once and reuses prompt prefixes (:mod:`.engine`), on FastAPI/uvicorn (:mod:`.server`)."""
