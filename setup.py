"""The one compiled module: the serving read's splice (src/reelrec/compose/_splice.pyx).

Everything else is in pyproject.toml. The extension is optional: where it cannot be built (no C
compiler), reelrec installs without it and serves pages through the Python splice it mirrors
(``reelrec.compose.page.Assembler.blob_json_py``), the same bytes at a higher CPU cost.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = cythonize(
    [Extension("reelrec.compose._splice", ["src/reelrec/compose/_splice.pyx"],
               # the scores are computed as the Python reference computes them: no fused multiply-add
               extra_compile_args=["-O2", "-ffp-contract=off"])],
    quiet=True)  # the .pyx states its own compiler directives
for ext in extensions:
    ext.optional = True  # set after cythonize, which does not carry the flag over
setup(ext_modules=extensions)
