"""What a generated world is: its sizes and the `World` record of what it holds.

`wit_builder.demo.world` makes a world and `wit_builder.demo.wikiworld` writes its Wikipedia
side; both describe it with these types, which depend on neither.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wit_builder.demo.drawing import DEFAULT_PX
from wit_builder.errors import WitError


@dataclass(frozen=True)
class Size:
    pool_rows: int
    filler_pages: int
    wiki_scale: int      # mentions of the most frequent concept; rank r gets wiki_scale / r
    talk_pages: int
    eval_per_class: int
    min_freq: int        # a threshold that splits the concepts into frequent and rare
    pageview_min: int


SIZES = {
    "test": Size(pool_rows=300, filler_pages=8, wiki_scale=150, talk_pages=3, eval_per_class=3,
                 min_freq=15, pageview_min=2000),
    "small": Size(1200, 20, 300, 6, 8, 25, 2000),
    "demo": Size(4000, 60, 800, 12, 20, 60, 2000),
}

@dataclass
class World:
    """Paths of what make_world wrote, and the facts tests check results against."""
    root: Path
    size: str
    seed: int
    base_url: str
    wiki_dump: Path
    wiki_multistream: Path
    wiki_multistream_index: Path
    wordnet_dir: Path
    pageviews: Path
    pool_parquet: Path
    pool_tsv: Path
    truth: Path
    eval_dir: Path
    image_px: int = DEFAULT_PX
    slow_seconds: float = 3.0
    min_freq: int = 0
    pageview_min: int = 0
    classnames: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    concepts: list[str] = field(default_factory=list)
    wiki_counts: dict[str, int] = field(default_factory=dict)
    wiki_bigram_counts: dict[str, int] = field(default_factory=dict)
    frequent_concepts: list[str] = field(default_factory=list)
    rare_concepts: list[str] = field(default_factory=list)
    markup_only_words: dict[str, str] = field(default_factory=dict)
    talk_only_words: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    redirects: dict[str, str] = field(default_factory=dict)
    talk_titles: list[str] = field(default_factory=list)
    pageviews_en: dict[str, int] = field(default_factory=dict)
    popular_titles: list[str] = field(default_factory=list)
    wordnet_lemmas: dict[str, list[str]] = field(default_factory=dict)
    pool_kinds: dict[str, int] = field(default_factory=dict)
    thing_counts: dict[str, int] = field(default_factory=dict)

    def save(self) -> None:
        d = {k: (str(v.relative_to(self.root)) if isinstance(v, Path) and k != "root" else v)
             for k, v in asdict(self).items() if k != "root"}
        (self.root / "world.json").write_text(json.dumps(d, indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, root: str | Path) -> "World":
        """The World that make_world wrote under `root`."""
        root = Path(root)
        f = root / "world.json"
        if not f.exists():
            raise WitError(f"{f} not found: create the world with make_world({str(root)!r}) first")
        d = json.loads(f.read_text())
        paths = {k for k, t in cls.__annotations__.items() if t == "Path"} - {"root"}
        return cls(root=root, **{k: (root / v if k in paths else v) for k, v in d.items()})
