"""The one native piece: geodns.dns._udpbatch (recvmmsg/sendmmsg bursts, Linux).

Everything else is in pyproject.toml. The extension is optional: when it
cannot be built (no compiler, no Python headers, not Linux) the install
still succeeds and geodns.dns.udpbatch serves UDP with its pure-Python path.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(
        Extension(
            "geodns.dns._udpbatch",
            ["geodns/dns/_udpbatch.c", "geodns/dns/_hot.c"],
            depends=["geodns/dns/_hot.h"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    )

setup(ext_modules=ext_modules)
