"""Peer servers for bench/serve.py: launchers (launch.py), MLServer's onnxruntime runtime, PyTriton's script."""
