"""Compressed client updates: a client mod encodes each update, the server's guard decodes it before its checks.

``codec`` holds the encodings (fp16 / bf16, 8- and 4-bit stochastic quantization, top-k); ``mod`` the client
side with error feedback in the node state; :func:`decode_reply` the server side.
"""

from ffm.compression.codec import CODECS, Codec, decode, encode
from ffm.compression.mod import RESIDUAL_KEY, compression_mod, decode_reply

__all__ = ["CODECS", "RESIDUAL_KEY", "Codec", "compression_mod", "decode", "decode_reply", "encode"]
