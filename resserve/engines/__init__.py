"""Engines behind one interface (:class:`resserve.engines.base.Engine`), runtime only.

One module per engine; :mod:`resserve.engines.factory` opens the right one from a built artifact,
:mod:`resserve.engines.hardware` holds every probe of what this machine can run.
"""
