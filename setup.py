"""The one compiled part of beokit, optional: beo boot's TFTP lock-step hot path.

Everything else is in pyproject.toml.  Where there is no C compiler or no
Python headers the build skips the extension (``optional=True``) and beo boot
runs the same logic in Python (a few per cent less TFTP throughput on a busy
server; see docs/boot.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "beokit.boot._lockstep",
            ["src/beokit/boot/_lockstep.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
