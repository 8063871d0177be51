"""Serving what was pruned: a pruned model written as one GGUF file that llama.cpp runs with the
removed blocks really gone (``gguf``), its tokenizer embedded (``vocab``), a model card beside it
(``card``), and llama.cpp itself, through its Python binding, to check and measure the file
(``engine``)."""
