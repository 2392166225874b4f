"""Submit the compiled pipeline to a Kubeflow Pipelines server: a new pipeline version, then a run.

Every submission uploads the spec as a new, named version (commit + time), so the KFP UI keeps
which spec each run used; the run then references that version, not an inline copy.

What runs is the image's code, so a submission is checked first (`check_submission`): the working tree
has no uncommitted changes to tracked files, and the image is HEAD's, referenced by digest
(`REPOSITORY:COMMIT@sha256:DIGEST`, what `make image-push` prints): a tag can be pushed over, and KFP's
cache keys on the image reference, so a reused tag would replay stale results for new code.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypson.provenance import git

DESCRIPTION = "Crypson: trains, evaluates, attacks and promotes the cGAN, VAE and latent classifier."


DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
MIN_COMMIT_TAG = 12  # the shortest commit prefix accepted as an image tag


def image_commit_tag(image: str) -> str:
    """The tag of an image reference (`host:port/name:tag@sha256:...` -> `tag`), or "" without one."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def check_submission(repo: Path, image: str, *, allow_dirty: bool = False, allow_image_mismatch: bool = False) -> str:
    """Refuse a submission whose code is not what the image runs; return HEAD's commit.

    Raises:
        ValueError: tracked files differ from HEAD (unless `allow_dirty`), or `image` is not referenced by
            digest with HEAD's commit as its tag (unless `allow_image_mismatch`); the message names the files
            or the reference and says how to fix it.
    """
    head = git("rev-parse", "HEAD", cwd=repo)
    if not head:
        raise ValueError(f"{Path(repo).resolve()} is not a git checkout with a commit")
    changed = git("diff", "--name-only", "HEAD", cwd=repo).splitlines()  # tracked files, staged or not
    if changed and not allow_dirty:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise ValueError(f"uncommitted changes to tracked files ({shown}): the image holds commit {head[:12]}'s "
                         "code, not these; commit and rebuild the image, or pass --allow-dirty")
    if allow_image_mismatch:
        return head
    tag = image_commit_tag(image)
    if not DIGEST.search(image):
        raise ValueError(f"image {image!r} is not referenced by digest: pass --image REPOSITORY:{head[:12]}@sha256:"
                         "DIGEST (`make image-push` prints it), or --allow-image-mismatch")
    if len(tag) < MIN_COMMIT_TAG or not head.startswith(tag):
        raise ValueError(f"image {image!r} is tagged {tag or 'nothing'!r}, not HEAD's commit {head}: build and push "
                         "this commit's image (`make image-push`), or pass --allow-image-mismatch")
    return head


@dataclass(frozen=True)
class Submission:
    pipeline_id: str
    version_id: str
    experiment_id: str
    run_id: str


def version_name(pipeline_name: str, git_commit: str, now: datetime.datetime | None = None) -> str:
    """A unique, readable version name: the pipeline, the short commit, the UTC time to the second."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    commit = re.sub(r"[^0-9a-zA-Z-]", "", git_commit)[:12] or "nocommit"
    return f"{pipeline_name}-{commit}-{now.strftime('%Y%m%d-%H%M%S')}"


def submit(client: Any, package: Path, *, pipeline_name: str, version: str, experiment: str, run_name: str,
           arguments: dict[str, str], namespace: str | None = None) -> Submission:
    """Upload `package` as version `version` of `pipeline_name` (creating the pipeline once) and run it.

    Args:
        client: a kfp.Client.
        package: the compiled spec (pipelines/crypson_pipeline.yaml).
        pipeline_name: the pipeline's name on the server.
        version: the new version's name (unique per pipeline).
        experiment: KFP experiment to run in (created when missing).
        run_name: the run's display name.
        arguments: the pipeline's arguments (params, git_commit, data_repo_url, ...).
        namespace: the user's namespace on a multi-user deployment; None on a single-user one.
    """
    package = Path(package)
    if not package.is_file():
        raise FileNotFoundError(f"no compiled pipeline at {package.resolve()}: run `crypson pipeline compile`")
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(str(package), pipeline_name=pipeline_name, description=DESCRIPTION,
                                             namespace=namespace).pipeline_id
    uploaded = client.upload_pipeline_version(str(package), pipeline_version_name=version, pipeline_id=pipeline_id,
                                              description=DESCRIPTION)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    run = client.run_pipeline(experiment_id=experiment_id, job_name=run_name, pipeline_id=pipeline_id,
                              version_id=uploaded.pipeline_version_id, params=arguments)
    return Submission(pipeline_id, uploaded.pipeline_version_id, experiment_id, run.run_id)
