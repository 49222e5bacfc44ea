"""Prefect Blocks: secrets the site keeps on the Prefect server, named by the site config.

Run parameters only *select* named entries of the site configuration (the policy file's
``sources:``, :mod:`secmlops.site`); where a dataset, image or registry is and what it is
pinned to are the site's, never a block a run picks. What is left for blocks is what Prefect
keeps best: secrets. A site entry names the block (``git_credentials: corp-git``) and the
worker loads it; a run cannot choose another one.

Gate policies are deliberately *not* a block either: they live in ``secmlops-policy.yaml``
in the worker's checkout (policy as code, changed by review).
"""

from blocks.git_credentials import GitCredentials

__all__ = ["GitCredentials"]
