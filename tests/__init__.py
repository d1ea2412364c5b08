"""radpriv's tests: a regular package, so that `tests.synthetic` is this folder even when an
installed distribution (diffprivlib 0.6.6) ships a top-level `tests` package of its own."""
