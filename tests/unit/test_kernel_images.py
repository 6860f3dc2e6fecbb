"""A declared container loses its kernel image packages; nothing else ever does (hk-os-kern-05)."""

from __future__ import annotations

import subprocess

from roles.kernel import KERNEL_IMAGES_COMMAND, kernel_images_to_remove

IMAGES = ["linux-image-amd64", "linux-image-6.1.0-57-amd64"]


def test_a_declared_container_that_is_one_loses_every_kernel_image():
    assert kernel_images_to_remove({"container": True}, IMAGES, True) == sorted(IMAGES)


def test_a_vm_declared_a_container_by_mistake_keeps_its_kernel():
    assert kernel_images_to_remove({"container": True}, IMAGES, False) == []


def test_an_undeclared_container_keeps_it_too():
    """Undeclared, verify fails its kernel controls (an auditor must see the surprise); the deploy removes nothing."""
    assert kernel_images_to_remove({}, IMAGES, True) == []


def test_the_query_lists_installed_packages_only(tmp_path):
    """The command as the role and the check run it, against a dpkg that reports one installed, one removed image."""
    fake = tmp_path / "dpkg-query"
    fake.write_text("#!/bin/sh\nprintf 'ii  linux-image-amd64\\nrc  linux-image-6.1.0-9-amd64\\n'\n")
    fake.chmod(0o755)
    out = subprocess.run(["sh", "-c", KERNEL_IMAGES_COMMAND], capture_output=True, text=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}).stdout
    assert out.split() == ["linux-image-amd64"]
