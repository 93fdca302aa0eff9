"""Kernel tests run Triton's interpreter on CPU; ``tests/conftest.py`` switches it on.

It must be on before Triton is first imported anywhere in the run (transformers and
SGLang import it too), so the root conftest sets ``TRITON_INTERPRET=1``.
"""
