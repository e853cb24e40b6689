"""Foreign checkpoints in: which of a file's tensor names are this model's.

A file written elsewhere names its tensors after the module that held the model: Lightning's
`model.` (the LightningModule's attribute), DDP's `module.`, torch.compile's `_orig_mod.`,
`net.`, `backbone.`, or none where the model itself is wrapped. The mapping that matches most
tensors by name and shape wins (ties: the simplest), and the run says which it chose. What no
rule finds, `init_map` says (OLD=NEW prefix renames, applied first)."""

from __future__ import annotations

from collections import Counter

from trainlab.errors import ConfigError

MAX_DEPTH = 3  # prefixes of up to three dotted segments ("model.model.encoder.")
MAX_CANDIDATES = 200


def parse_init_map(text: str | None) -> list[tuple[str, str]]:
    """ "model.backbone.=,fc.=head." -> [("model.backbone.", ""), ("fc.", "head.")]."""
    if not text:
        return []
    pairs = []
    for part in text.split(","):
        old, eq, new = part.strip().partition("=")
        if not eq or not old:
            raise ConfigError(f"init_map = {text!r} is invalid: give OLD=NEW prefix renames separated by commas, "
                              "e.g. model.backbone.=,fc.=head. (NEW may be empty)")
        pairs.append((old, new))
    return pairs


def _prefixes(keys) -> list[str]:
    counts: Counter = Counter()
    for k in keys:
        parts = k.split(".")
        for depth in range(1, min(MAX_DEPTH, len(parts) - 1) + 1):
            counts[".".join(parts[:depth]) + "."] += 1
    return [p for p, _ in counts.most_common(MAX_CANDIDATES)]


def rename(state: dict, pairs: list[tuple[str, str]]) -> dict:
    for old, new in pairs:
        state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    return state


def best_mapping(own: dict, state: dict) -> tuple[dict, str, int]:
    """(the renamed state, what was done, how many tensors then match `own` by name and shape)."""
    def score(candidate: dict) -> int:
        return sum(1 for k, v in candidate.items() if k in own and tuple(v.shape) == tuple(own[k].shape))

    options = [(state, "names as they are")]
    for p in _prefixes(state):
        options.append(({(k[len(p):] if k.startswith(p) else k): v for k, v in state.items()},
                        f"the prefix {p!r} stripped"))
    for q in _prefixes(own):
        options.append(({q + k: v for k, v in state.items()}, f"the prefix {q!r} added"))
    scored = [(score(s), -i, s, what) for i, (s, what) in enumerate(options)]
    n, _, chosen, what = max(scored, key=lambda t: (t[0], t[1]))  # most matches; ties: the earliest, simplest
    return chosen, what, n


def no_match_hint(own: dict, state: dict) -> str:
    """Why nothing matched, when names are the cause: both sides' usual prefixes."""
    theirs, mine = _prefixes(state)[:1], _prefixes(own)[:1]
    example = next(iter(state), "")
    return (f"no tensor matched by name: the file's keys look like {example!r}"
            + (f" (prefixed with {theirs[0]!r})" if theirs else "")
            + f", this model's like {next(iter(own), '')!r}"
            + (f" (prefixed with {mine[0]!r})" if mine else "")
            + "; map them with --init-map OLD=NEW")
