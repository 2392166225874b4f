"""Data validation of the per-image metadata table with great-expectations (GX Core 1.x).

The `prepare` stage writes one row per image; `validate_metadata` runs a GX suite on it (and on a derived
per-class count table) through GX Checkpoints in an ephemeral, in-memory context, and collects every failed
expectation, so the pipeline can stop before training with a short summary on the console. Given a folder,
the Checkpoints' UpdateDataDocsAction builds GX's Data Docs there (a static HTML site: the suites, and each
validation's result with its observed values), which is what users read.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

# GX logs its registry and store set-up at INFO/DEBUG, from import time on; a stage that logs at INFO
# would drown in it, so quiet its logger before the GX imports below.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.expectations.row_conditions import Column  # noqa: E402

from crypson.files import atomic_write_json

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("split", "label", "char", "height", "width", "mean", "std", "min", "max", "nan_count",
                    "sha256")
# Derived leakage flags: True for a row whose image (sha256) is in both splits of the pair.
LEAK_COLUMNS = {"sha256_in_train_and_test": ("train", "test"), "sha256_in_val_and_test": ("val", "test")}
DOCS_SITE = "crypson"  # the Data Docs site's name in the context
_EXAMPLES = 3  # example values kept per failure; enough to find the bad rows, short enough for a log line


@dataclass(frozen=True)
class ValidationSettings:
    """Thresholds of the metadata suite (params.yaml `validate` section plus the dataset's class count)."""

    num_classes: int
    image_size: int = 32
    min_class_fraction: float = 0.5  # each class's train count >= this fraction of the mean per class
    max_class_fraction: float = 2.0
    pixel_mean_range: tuple[float, float] = (0.02, 0.6)  # mostly dark background; blank/saturated is out
    min_pixel_std: float = 0.02

    def __post_init__(self) -> None:
        for name, minimum in (("num_classes", 2), ("image_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if not 0 < self.min_class_fraction <= 1:
            raise ValueError(f"min_class_fraction must be in (0, 1], got {self.min_class_fraction!r}")
        if self.max_class_fraction < 1:
            raise ValueError(f"max_class_fraction must be >= 1, got {self.max_class_fraction!r}")
        low, high = self.pixel_mean_range
        if not 0 <= low < high <= 1:
            raise ValueError(f"pixel_mean_range must satisfy 0 <= low < high <= 1, got {(low, high)!r}")
        # The std of values in [0, 1] is at most 0.5, so a larger minimum would reject every image.
        if not 0 <= self.min_pixel_std < 0.5:
            raise ValueError(f"min_pixel_std must be in [0, 0.5), got {self.min_pixel_std!r}")


@dataclass(frozen=True)
class ExpectationFailure:
    """One failed expectation.

    Attributes:
        expectation: GX expectation type, e.g. "expect_column_values_to_be_between".
        column: the column it checks ("" for table-level expectations).
        unexpected_count: rows (or, for set expectations, values) that broke it; None when GX raised.
        examples: a few offending values.
        element_count: rows it was evaluated on, when GX reports it.
        scope: where it ran, e.g. "train split" or "train class counts"; "" for the whole table.
        params: the bounds or set, short, e.g. "0..46".
        error: GX's exception message when the expectation could not be evaluated.
    """

    expectation: str
    column: str
    unexpected_count: int | None
    examples: tuple[Any, ...]
    element_count: int | None = None
    scope: str = ""
    params: str = ""
    error: str = ""

    def describe(self) -> str:
        """One summary line, e.g. `label: expect_column_values_to_be_between(0..46) failed on 3 of 14100 rows`."""
        head = f"{self.column or 'table'}: {self.expectation}({self.params})"
        if self.scope:
            head += f" on {self.scope}"
        shown = [f"{value:.4g}" if isinstance(value, float) else str(value) for value in self.examples]
        examples = f" (e.g. {', '.join(shown)})" if shown else ""
        if self.error:
            return f"{head} could not be evaluated: {self.error}"
        if self.expectation == "expect_column_to_exist":
            return f"{head} failed: column is missing"
        if self.unexpected_count is None:
            return f"{head} failed{examples}"
        if self.element_count is None:  # set expectations count values, not rows
            return f"{head} failed: {self.unexpected_count} values missing or unexpected{examples}"
        return f"{head} failed on {self.unexpected_count} of {self.element_count} rows{examples}"


@dataclass
class ValidationReport:
    """Outcome of `validate_metadata`.

    Attributes:
        success: True when every expectation passed.
        failures: every failed expectation, in suite order.
        results: the full GX result of each validated table, as JSON-ready dicts, keyed by table name.
    """

    success: bool
    failures: list[ExpectationFailure] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        """Short human summary: one line per failed expectation."""
        if self.success:
            return "metadata validation passed"
        lines = [f"metadata validation failed ({len(self.failures)} expectations):"]
        return "\n".join(lines + [f"  {failure.describe()}" for failure in self.failures])

    def to_dict(self) -> dict[str, Any]:
        """The full result, JSON-serialisable: success, the failures and each table's GX result."""
        return {"success": self.success, "failures": [asdict(f) for f in self.failures], "results": self.results}


def validate_metadata(metadata: pd.DataFrame, settings: ValidationSettings,
                      data_docs: Path | None = None) -> ValidationReport:
    """Run the metadata suite and collect every failure.

    Args:
        metadata: one row per image with the columns in REQUIRED_COLUMNS (extra columns are allowed).
        settings: the suite's thresholds.
        data_docs: a folder for GX's Data Docs site of the suites and their results; None builds none.

    Returns:
        A ValidationReport; `success` is False when any expectation failed.
    """
    context = _ephemeral_context()
    if data_docs is not None:
        context.add_data_docs_site(site_name=DOCS_SITE, site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(data_docs).resolve())}})
    source = context.data_sources.add_pandas("crypson")
    present = set(metadata.columns)
    frame = _with_leak_columns(metadata) if {"split", "sha256"} <= present else metadata
    # name -> (table, expectations, scope, column that identifies a flagged row in examples)
    tables = {"metadata": (frame, _metadata_expectations(present, settings), "", "sha256")}
    if {"split", "label"} <= present:
        counts = _train_class_counts(metadata, settings.num_classes)
        balance = _balance_expectations(counts, settings)
        tables["train_class_counts"] = (counts, balance, "train class counts", "label")

    report = ValidationReport(success=True)
    for name, (table, expectations, scope, index_column) in tables.items():
        index_columns = [index_column] if index_column in table.columns else []
        result = _run_suite(context, source, name, table, expectations, index_columns, data_docs is not None)
        report.results[name] = result
        report.failures += _failures(result, scope)
    report.success = not report.failures
    return report


def save_report(report: ValidationReport, path: Path) -> None:
    """Write `report.to_dict()` as JSON atomically (temp file + os.replace).

    Args:
        report: the validation report.
        path: destination file; missing parent folders are created.
    """
    atomic_write_json(Path(path), report.to_dict())


def _ephemeral_context() -> Any:
    """An in-memory GX context: no project directory, no docs site, no progress bars.

    GX 1.24 ships no usage-statistics client (`analytics_enabled` is only a stored config field and the
    PyPI version checker is never called), so nothing is sent; we still set it False to say so.
    """
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        # Without this GX draws a tqdm "Calculating Metrics" bar on stderr for every validation.
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _with_leak_columns(metadata: pd.DataFrame) -> pd.DataFrame:
    """Copy of `metadata` plus one boolean column per LEAK_COLUMNS pair of splits."""
    frame = metadata.copy()
    for column, (first, second) in LEAK_COLUMNS.items():
        hashes = [set(frame.loc[frame["split"] == split, "sha256"]) for split in (first, second)]
        shared = hashes[0] & hashes[1]
        # Only rows of the two splits count as involved; a val copy of a train/test image is another leak.
        frame[column] = frame["split"].isin((first, second)) & frame["sha256"].isin(shared)
    return frame


def _train_class_counts(metadata: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """Train rows per valid class index (0 for an absent class), one row per class."""
    train_labels = metadata.loc[metadata["split"] == "train", "label"]
    valid = train_labels[train_labels.isin(range(num_classes))].astype("int64")
    counts = valid.value_counts().reindex(range(num_classes), fill_value=0)
    return pd.DataFrame({"label": range(num_classes), "count": counts.to_numpy()})


def _metadata_expectations(present: set[str], settings: ValidationSettings) -> list[Any]:
    """Expectations on the metadata table; a missing column gets only its existence check, so it fails clearly."""
    ex = gx.expectations
    low, high = settings.pixel_mean_range
    classes = list(range(settings.num_classes))
    by_column: dict[str, list[Any]] = {
        "label": [ex.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=classes[-1])],
        "split": [ex.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS))],
        "height": [ex.ExpectColumnValuesToBeInSet(column="height", value_set=[settings.image_size])],
        "width": [ex.ExpectColumnValuesToBeInSet(column="width", value_set=[settings.image_size])],
        "min": [ex.ExpectColumnValuesToBeBetween(column="min", min_value=0)],
        "max": [ex.ExpectColumnValuesToBeBetween(column="max", max_value=1)],
        "mean": [ex.ExpectColumnValuesToBeBetween(column="mean", min_value=low, max_value=high)],
        "std": [ex.ExpectColumnValuesToBeBetween(column="std", min_value=settings.min_pixel_std)],
        "nan_count": [ex.ExpectColumnValuesToBeInSet(column="nan_count", value_set=[0])],
    }
    expectations: list[Any] = []
    for column in REQUIRED_COLUMNS:
        expectations.append(ex.ExpectColumnToExist(column=column))
        if column in present:
            # Range checks skip nulls, so a NaN pixel stat would pass them unless nulls are rejected too.
            expectations.append(ex.ExpectColumnValuesToNotBeNull(column=column))
            expectations += by_column.get(column, [])
    if {"split", "label"} <= present:
        for split in ("train", "test"):
            in_split = Column("split") == split  # GX evaluates it on that split's rows only
            expectations.append(ex.ExpectColumnDistinctValuesToEqualSet(
                column="label", value_set=classes, row_condition=in_split, meta={"scope": f"{split} split"}))
    if {"split", "sha256"} <= present:
        expectations += [ex.ExpectColumnValuesToBeInSet(column=column, value_set=[False], meta={"examples": "sha256"})
                         for column in LEAK_COLUMNS]
    return expectations


def _balance_expectations(counts: pd.DataFrame, settings: ValidationSettings) -> list[Any]:
    """Each class's train count within [min_class_fraction, max_class_fraction] x the mean count per class."""
    mean_count = float(counts["count"].mean())
    low, high = settings.min_class_fraction * mean_count, settings.max_class_fraction * mean_count
    return [gx.expectations.ExpectColumnValuesToBeBetween(column="count", min_value=low, max_value=high,
                                                          meta={"examples": "label"})]


def _run_suite(context: Any, source: Any, name: str, table: pd.DataFrame, expectations: list[Any],
               index_columns: list[str], build_docs: bool) -> dict[str, Any]:
    """Validate `table` against `expectations` through a Checkpoint (updating the Data Docs site when asked);
    returns the GX result as a JSON-ready dict."""
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": _EXAMPLES}
    if index_columns:  # lets a failure name the image (sha256) or class (label) behind a flagged row
        result_format["unexpected_index_column_names"] = index_columns
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])] if build_docs else []
    checkpoint = context.checkpoints.add(gx.Checkpoint(name=name, validation_definitions=[definition],
                                                       actions=actions, result_format=result_format))
    (result,) = checkpoint.run(batch_parameters={"dataframe": table}).run_results.values()
    return _without_run_identity(result.to_json_dict())


def _without_run_identity(value: Any) -> Any:
    """The result without what differs between two runs on the same data (GX's random ids, run names and
    times: the Data Docs keep them): validation.json is a DVC dependency of the training stages, which must
    not re-run because the same data was validated again."""
    volatile = {"id", "run_id", "validation_id", "validation_time", "checkpoint_id", "ge_load_time"}
    if isinstance(value, dict):
        return {key: _without_run_identity(inner) for key, inner in value.items() if key not in volatile}
    if isinstance(value, list):
        return [_without_run_identity(inner) for inner in value]
    return value


def _failures(result: dict[str, Any], scope: str) -> list[ExpectationFailure]:
    """Every failed expectation of one GX suite result."""
    failures = []
    for outcome in result["results"]:
        if outcome["success"]:
            continue
        config, details = outcome["expectation_config"], outcome.get("result") or {}
        kwargs, meta = config["kwargs"], config.get("meta") or {}
        missing, extra = details.get("partial_missing_list", []), details.get("partial_unexpected_list", [])
        examples = [*missing, *extra]
        unexpected = details.get("unexpected_count")
        if "missing_count" in details and "element_count" not in details:  # distinct-set: missing + extra values
            unexpected = details["missing_count"] + (unexpected or 0)
        if "examples" in meta:  # show the named column of the flagged rows instead of the flag itself
            column = meta["examples"]
            rows = details.get("partial_unexpected_index_list", [])
            # A sha256 prefix is enough to find the image; both rows of a leaked pair share one.
            examples = list(dict.fromkeys(f"{column}={str(row[column])[:12]}" for row in rows))
        failures.append(ExpectationFailure(
            expectation=config["type"], column=kwargs.get("column", ""), unexpected_count=unexpected,
            examples=tuple(examples[:_EXAMPLES]), element_count=details.get("element_count"),
            scope=meta.get("scope", scope), params=_format_params(kwargs),
            error=_exception_message(outcome.get("exception_info") or {}),
        ))
    return failures


def _format_params(kwargs: dict[str, Any]) -> str:
    """Bounds or set of an expectation, short: "0..46", ">=0.02", "{train, val, test}"."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None or high is not None:
        if high is None:
            return f">={low:g}"
        return f"<={high:g}" if low is None else f"{low:g}..{high:g}"
    values = kwargs.get("value_set")
    if values is None:
        return ""
    if len(values) > 2 and all(isinstance(v, int) for v in values) and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}..{values[-1]}"  # the class indices 0..num_classes-1
    return "{" + ", ".join(map(str, values)) + "}"


def _exception_message(info: dict[str, Any]) -> str:
    """GX's exception message, if evaluating the expectation raised; "" otherwise.

    GX reports either one flat {raised_exception, exception_message} dict or one such dict per metric.
    """
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    messages = [entry.get("exception_message") or "" for entry in entries if entry.get("raised_exception")]
    return "; ".join(dict.fromkeys(m for m in messages if m))
