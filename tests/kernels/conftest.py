"""Run Triton kernels on CPU through its interpreter.

TRITON_INTERPRET only takes effect if it is set before triton is first imported (triton.language's
own @triton.jit helpers are bound then), and importing a transformers model imports triton. pytest
loads this file before importing any test module of this directory, and collects this directory
before the test_*.py files beside it, so setting it here comes early enough.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"
