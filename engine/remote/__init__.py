"""The remote backend: an OpenAI-compatible server (llama.cpp's, vLLM, Ollama, `llama-tui serve`)
behind the same interface as the local engine (engine/backend.py).

client.py   HTTP over httpx, SSE over httpx-sse; every fault mapped to one line
counting.py how the conversation's tokens are counted: the server's /tokenize, a local tokenizer
            (`tokenizer =`), or an estimate that says so
backend.py  RemoteBackend: load (models, context size), generate (trimming, metrics), clear, pin

The modules import only their siblings and the engine's own modules, never this package.
"""
