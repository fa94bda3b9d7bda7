"""ExCEL's text semantic enrichment (spec 4): the attribute bank and its aggregation into the class texts.

* The **bank**: K_a cluster centres of LLM-written class descriptions embedded by the CLIP in use
  (``[D, K_a]``), and per class the clusters its sentences fall in (stored, never used). It is read
  from the file the ExCEL repository ships (``attributes_text/pascal_voc_desc_clip_ViT-B-16_gpt4.0_cluster_112_embedding_bank.pth``,
  a ``[centres, flags]`` list; clipes does not ship another project's data) or built by clipes from a
  descriptor JSON of that repository's layout (``{class name: [sentences]}``) as the reference builds
  it: every sentence lower-cased, encoded, L2-normalised, scikit-learn ``KMeans(K_a, random_state=0)``.
  A built bank is cached in the work folder, keyed to the CLIP's sha256 and the descriptors' sha256.
* The **aggregation** (``attr_aggregate``, top-K 0.9): per class, the raw dot products with the
  centres, the ``m = int((1 - 0.9) K_a)`` smallest masked (a float quirk: 0.09999999999999998, so
  K_a = 80 gives 7), softmax, the weighted centres added to the class text, every row L2-normalised;
  the background rows unchanged. A K_a for which the reference gives NaN (``m = 0``: K_a <= 10) is
  refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from clipes.errors import UserError
from clipes.store.checkpoints import safe_load, torch_file_problem
from clipes.store.fsutil import atomic_open

TOP_K = 0.9
CLUSTERS = {"voc12": 112, "coco14": 224}
BANK_CACHE = "attribute_bank.npz"
NO_ATTRIBUTES = ("give ATTRIBUTES: ExCEL's attribute bank (the ExCEL repository's attributes_text/"
                 "*_embedding_bank.pth) or a descriptor JSON {class: [sentences]} (see docs/excel.md)")


def masked_count(clusters: int, top_k: float = TOP_K) -> int:
    """How many of the smallest logits the reference masks: ``int((1 - top_k) * clusters)``."""
    return int((1 - top_k) * clusters)


def read_bank(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centres [D, K_a], flags [classes, K_a])`` of a bank file (the ExCEL ``.pth`` or a clipes ``.npz``).

    Raises:
        UserError: missing or unreadable file, or not a bank.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"attribute bank not found: {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                centres, flags = torch.from_numpy(data["centers"]), torch.from_numpy(data["flags"])
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"{path} is not an attribute bank ({type(exc).__name__}: {exc})") from None
    else:
        problem = torch_file_problem(path)
        if problem:
            raise UserError(f"cannot read attribute bank {path}: {problem}")
        data = safe_load(path)
        if not (isinstance(data, (list, tuple)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
            raise UserError(f"{path} is not an attribute bank: expected [centres, flags] tensors")
        centres, flags = data
    if centres.ndim != 2 or flags.ndim != 2 or flags.shape[1] != centres.shape[1]:
        raise UserError(f"{path} is not an attribute bank: centres {tuple(centres.shape)}, flags {tuple(flags.shape)}")
    return centres.float(), flags.float()


def read_descriptors(path: Path, class_names: list[str]) -> dict[str, list[str]]:
    """The descriptor file's ``{class: [sentences]}`` in the file's order (the order the reference
    clusters in), checked to hold every class of the dataset.

    Raises:
        UserError: missing or unreadable file, not ``{class: [sentences]}``, or a class of the
            dataset without sentences.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"descriptor file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable JSON file: {exc}") from None
    if not isinstance(data, dict) or not data or not all(
            isinstance(v, list) and v and all(isinstance(s, str) for s in v) for v in data.values()):
        raise UserError(f"{path}: expected {{class name: [sentences, ...]}}")
    missing = [name for name in class_names if name not in data]
    if missing:
        raise UserError(f"{path} has no sentences for class(es) {', '.join(missing[:5])}"
                        + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return data


@torch.no_grad()
def sentence_embeddings(clip_model: torch.nn.Module, sentences: list[str], batch: int = 64) -> torch.Tensor:
    """L2-normalised CLIP text embeddings of lower-cased sentences ``[S, D]`` (as ``attr_clustering``)."""
    from clipes.compat import import_clip

    clip = import_clip()
    device = clip_model.token_embedding.weight.device
    out = []
    for start in range(0, len(sentences), batch):
        tokens = clip.tokenize([s.lower() for s in sentences[start:start + batch]], truncate=True).to(device)
        out.append(torch.nn.functional.normalize(clip_model.encode_text(tokens).float(), p=2, dim=1).cpu())
    return torch.cat(out)


def build_bank(embeddings: torch.Tensor, owners: list[int], classes: int, clusters: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's clustering: ``KMeans(clusters, random_state=0)`` of the sentence embeddings.

    Args:
        embeddings: ``[S, D]`` unit sentence embeddings.
        owners: the class of each sentence.

    Returns:
        ``(centres [D, clusters], flags [classes, clusters])``.
    """
    from sklearn.cluster import KMeans

    if clusters > len(embeddings):
        raise UserError(f"{clusters} attribute clusters need at least as many sentences, not {len(embeddings)}")
    kmeans = KMeans(n_clusters=clusters, random_state=0).fit(embeddings.numpy())
    flags = np.zeros((classes, clusters), dtype=np.float32)
    for owner, label in zip(owners, kmeans.labels_):
        flags[owner, label] = 1
    return torch.tensor(kmeans.cluster_centers_.transpose(1, 0)), torch.from_numpy(flags)


def bank_for(clip_model: torch.nn.Module, clip_sha256: str, descriptors: Path, class_names: list[str],
             clusters: int, cache_dir: Path | None, echo=print) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A bank built from ``descriptors`` with this CLIP, from ``cache_dir`` when it was built before.

    Returns:
        ``(centres, flags, record)``; the record (sha256s, clusters) identifies the bank.
    """
    descriptions = read_descriptors(descriptors, class_names)
    digest = hashlib.sha256(Path(descriptors).expanduser().read_bytes()).hexdigest()
    record = {"descriptors": str(descriptors), "descriptors_sha256": digest, "clip_sha256": clip_sha256,
              "clusters": int(clusters), "classes": list(class_names)}
    cache = Path(cache_dir) / BANK_CACHE if cache_dir is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            if json.loads(str(data["record"])) == record:
                return torch.from_numpy(data["centers"]), torch.from_numpy(data["flags"]), record
    names = list(descriptions)  # the file's order: what the reference clusters (its flags follow it too)
    flat = [s for name in names for s in descriptions[name]]
    owners = [names.index(name) for name in names for _ in descriptions[name]]
    echo(f"attribute bank: clustering {len(flat)} sentences of {len(names)} classes into {clusters} clusters")
    centres, flags = build_bank(sentence_embeddings(clip_model, flat), owners, len(names), clusters)
    flags = flags[[names.index(name) for name in class_names]]  # rows in the dataset's class order
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(cache, "wb") as handle:
            np.savez(handle, centers=centres.numpy(), flags=flags.numpy(), record=np.array(json.dumps(record)))
    return centres, flags, record


def aggregate(text: torch.Tensor, centres: torch.Tensor, classes: int, top_k: float = TOP_K) -> torch.Tensor:
    """The enriched text features ``[T, D]`` (spec 4.3).

    Args:
        text: ``[T, D]`` unit class texts (the first ``classes`` rows) and background texts.
        centres: ``[D, K_a]`` the bank's centres.

    Raises:
        UserError: a width that differs from the CLIP's, or a K_a for which the reference gives NaN.
    """
    if centres.shape[0] != text.shape[1]:
        raise UserError(f"the attribute bank is {centres.shape[0]}-dimensional but this CLIP's text features are "
                        f"{text.shape[1]}-dimensional (a bank of another CLIP?)")
    m = masked_count(centres.shape[1], top_k)
    if m == 0:
        raise UserError(f"an attribute bank of {centres.shape[1]} clusters masks int((1 - {top_k}) x "
                        f"{centres.shape[1]}) = 0 logits, for which the reference's aggregation is NaN; use more clusters")
    centres = centres.to(text.device, text.dtype)
    fg, bg = text[:classes], text[classes:]
    logits = fg @ centres
    ordered, index = torch.sort(logits, dim=-1, descending=True)
    ordered[:, -m:] = float("-inf")
    restored = torch.zeros_like(ordered).scatter_(-1, index, ordered)
    weights = restored.softmax(dim=-1)  # [classes, K_a]
    enriched = torch.cat([weights @ centres.t() + fg, bg], dim=0)
    return enriched / enriched.norm(dim=1, keepdim=True)


def attribute_weights(text: torch.Tensor, centres: torch.Tensor, classes: int, top_k: float = TOP_K) -> torch.Tensor:
    """The per-class softmax weights over the clusters (zeros at the masked ones): ``[classes, K_a]``."""
    logits = text[:classes] @ centres.to(text.dtype)
    m = masked_count(centres.shape[1], top_k)
    ordered, index = torch.sort(logits, dim=-1, descending=True)
    ordered[:, -m:] = float("-inf")
    return torch.zeros_like(ordered).scatter_(-1, index, ordered).softmax(dim=-1)


def resolve_bank(source: Path | str | None, clip_model: torch.nn.Module, clip_sha256: str, class_names: list[str],
                 clusters: int, cache_dir: Path | None, echo=print) -> tuple[torch.Tensor, dict]:
    """The centres ``[D, K_a]`` of ``ATTRIBUTES`` and a record naming them, checked against the CLIP.

    Args:
        source: a bank (``.pth`` as the ExCEL repository ships it, or a clipes ``.npz``) or a
            descriptor JSON (clustered with this CLIP, cached in ``cache_dir``).
        clusters: K_a when clustering.

    Raises:
        UserError: no ATTRIBUTES, a missing or unreadable file, a bank whose width is not the CLIP's,
            too few clusters, or a class of the dataset absent from the descriptors.
    """
    if source is None:
        raise UserError(NO_ATTRIBUTES)
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"attribute file not found: {path}")
    if path.suffix.lower() == ".json":
        centres, flags, record = bank_for(clip_model, clip_sha256, path, class_names, clusters, cache_dir, echo)
        record = {**record, "kind": "descriptors"}
    else:
        centres, flags = read_bank(path)
        record = {"bank": str(path), "bank_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                  "clusters": int(centres.shape[1]), "kind": "bank"}
        if flags.shape[0] != len(class_names):
            echo(f"warning: {path} was built for {flags.shape[0]} classes; this dataset has {len(class_names)}")
    width = int(clip_model.text_projection.shape[1])
    if centres.shape[0] != width:
        raise UserError(f"{path}: an attribute bank of width {centres.shape[0]}, but this CLIP's text features are "
                        f"{width}-dimensional (a bank of another CLIP?)")
    if masked_count(centres.shape[1]) == 0:
        raise UserError(f"{path}: a bank of {centres.shape[1]} clusters; the reference's aggregation masks "
                        f"int((1 - {TOP_K}) x {centres.shape[1]}) = 0 logits and gives NaN: use more than 10")
    return centres, record
