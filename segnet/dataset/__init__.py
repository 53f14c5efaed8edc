"""Reading and building the multi-digit MNIST archive: the zip, its .mat files, the built-in generator and
`prepare`, which turns an archive into arrays. Nothing here imports torch."""

from segnet.dataset.archive import ArchiveLimits, index_archive, open_archive, read_member
from segnet.dataset.generate import GenerateConfig, SplitSpec, build_archive
from segnet.dataset.matfile import read_panels, write_panels
from segnet.dataset.prepare import prepare_dataset

__all__ = [
    "ArchiveLimits",
    "GenerateConfig",
    "SplitSpec",
    "build_archive",
    "index_archive",
    "open_archive",
    "prepare_dataset",
    "read_member",
    "read_panels",
    "write_panels",
]
