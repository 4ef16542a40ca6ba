"""memmodel -- msadb's bundled memory model: data, training, evaluation,
export, and the GGUF / safetensors / SentencePiece file I/O they share.

Run its commands from the repository root with tools/ on the module path:

    PYTHONPATH=tools python3 -m memmodel.data all --out .train-data
    PYTHONPATH=tools python3 -m memmodel.train --data .train-data --out OUT ...
    PYTHONPATH=tools python3 -m memmodel.export_gguf OUT models/msadb-mem.gguf
    PYTHONPATH=tools python3 -m memmodel.evaluate cpu --model models/msadb-mem.gguf
    PYTHONPATH=tools python3 -m memmodel.gguf dump models/msadb-mem.gguf

Modules, each importing only those above it in this list:
    gguf, safetensors_io, spm_model   file formats (numpy only)
    make_test_model                   small random llama models (tests)
    data                              text, tokenizer, facts, training arrays
    net                               the PyTorch model, checkpoints, GGUF -> PyTorch
    gpu_eval                          evaluation through the PyTorch model
    train                             training (GPU), resumable commands
    router                            a learned routing key for a trained model (a measurement)
    soup                              the weighted mean of checkpoints of one shape
    export_gguf                       checkpoint -> GGUF
    clib                              libmsadb through the msadb package (the C library's evaluation)
    evaluate                          evaluation sets and the C library's evaluation
"""
