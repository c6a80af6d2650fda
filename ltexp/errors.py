"""User-facing errors.

Anything raised as an :class:`LtexpError` is a problem with the user's input or environment. The
CLI prints its message as one line and exits non-zero, without a traceback; everything else is a
bug and keeps its traceback.
"""

import difflib

# What an offline user can run instead of the protocol (named in download errors).
OFFLINE_ALTERNATIVE = (
    "to try ltexp without downloads, run the embedded demo: -P preset=demo (mlflow run) or "
    "--preset demo"
)


class LtexpError(Exception):
    """An error the user can fix; its message says what is wrong and what would be right.

    ``exit_code``: what the CLI exits with (2: the input; 1: the machine, such as a full disk).
    """

    exit_code = 2


class ConfigError(LtexpError, ValueError):
    """A configuration value, preset or parameter is invalid."""


class DataError(LtexpError):
    """Dataset files are missing, corrupt, or do not match their manifest."""


class TrackingError(LtexpError):
    """A run, model or experiment cannot be found or used as asked."""


class TrainingError(LtexpError):
    """Training cannot go on (non-finite loss, unusable checkpoint)."""


def did_you_mean(name: str, valid: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` when a valid name is close to ``name``, else an empty string."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name_error(kind: str, name: object, valid: list[str] | tuple[str, ...]) -> ConfigError:
    """The one error for an unknown registry name: what was given, a near miss, the valid names."""
    return ConfigError(
        f"unknown {kind} {name!r}{did_you_mean(str(name), valid)}; valid: {', '.join(valid)}"
    )


class RunStopped(LtexpError):
    """A caller stopped a run on purpose (a search pruned a weak trial): the run ends KILLED
    with this reason, and nothing is wrong."""


class HostError(LtexpError):
    """The machine cannot do what was asked (a full disk, a folder that cannot be written)."""

    exit_code = 1


class WeightsError(LtexpError):
    """Pretrained weights cannot be found, downloaded or safely loaded."""
