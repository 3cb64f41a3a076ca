"""A miniature UniProt UniRef release built from real TrEMBL entries (../shared/fixtures), laid out like the FTP
tree: ``uniref/uniref90/uniref90.fasta.gz``, ``uniref/uniref50/uniref50.fasta.gz`` and
``uniref/uniref50/uniref50.xml.gz`` in UniProt's XML layout
(../shared/docs/DOMAIN.md: root ``<UniRef50 ... version=..>``, entries with a representative member and members,
each member's UniRef90 cluster as a property, repeated by every protein of that cluster).

Each real protein seeds one UniRef50 cluster: its UniRef90 clusters are the protein itself and 35 %-mutated
variants (new accessions), each with 2 %-mutated member proteins. The true membership is returned, and some
UniRef90 clusters are left out of the XML (``missing``) while the XML lists some that the FASTA lacks (``extra``).
"""
from __future__ import annotations

import gzip
import hashlib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import fixture_path

AA = "ACDEFGHIKLMNPQRSTVWY"
_HEADER = re.compile(r"^(?:sp|tr)\|(?P<acc>[^|]+)\|(?P<name>\S+) (?P<desc>.*?) OS=(?P<os>.*?)(?= OX=| GN=| PE=|$)")
_OX = re.compile(r" OX=(\d+)")


@dataclass
class MiniRelease:
    root: Path
    release: str
    uniref90_fasta: Path
    uniref50_xml: Path
    membership: dict[str, str] = field(default_factory=dict)    # UniRef90 id -> UniRef50 id, as in the XML
    fasta_ids: list[str] = field(default_factory=list)          # UniRef90 ids of the FASTA, in order
    missing: list[str] = field(default_factory=list)            # in the FASTA, not in the XML
    extra: list[str] = field(default_factory=list)              # in the XML, not in the FASTA

    def true_groups(self) -> dict[str, set[str]]:
        """UniRef50 id -> the UniRef90 ids of the FASTA the XML puts in it."""
        out: dict[str, set[str]] = {}
        for u90, u50 in self.membership.items():
            if u90 in self.fasta_ids:
                out.setdefault(u50, set()).add(u90)
        return out

    def expected_groups(self) -> list[list[str]]:
        """The clusters a level built from this release must give: the XML's groups, the unlisted alone."""
        return sorted([sorted(g) for g in self.true_groups().values()] + [[m] for m in self.missing])


def groups_of(clusters: list[dict], column: str) -> list[list[str]]:
    """Rows of ``clusters.parquet`` grouped by ``column``, as sorted lists of ids."""
    by: dict[str, set[str]] = {}
    for r in clusters:
        by.setdefault(r[column], set()).add(r["id"])
    return sorted(map(sorted, by.values()))


def _proteins(n: int) -> list[dict[str, str]]:
    text = fixture_path("sequences", "uniprot_trembl_500.fasta").read_text()
    out = []
    for block in text.split(">")[1:]:
        header, _, body = block.partition("\n")
        m = _HEADER.match(header)
        seq = body.replace("\n", "")
        if m and 60 <= len(seq) <= 400 and set(seq) <= set(AA):
            ox = _OX.search(header)
            out.append({**m.groupdict(), "ox": ox.group(1) if ox else "32644", "seq": seq})  # 32644: unidentified
        if len(out) == n:
            break
    return out


def _mutate(seq: str, rate: float, rng: random.Random) -> str:
    return "".join(rng.choice(AA) if rng.random() < rate else c for c in seq)


def _member_xml(tag: str, entry_name: str, acc: str, u90: str, u50: str, p: dict[str, str], seq: str,
                seed: bool) -> list[str]:
    digest = hashlib.sha256(seq.encode()).hexdigest().upper()
    desc = p["desc"].replace("&", "&amp;").replace('"', "&quot;")
    lines = [f"<{tag}>", f'  <dbReference type="UniProtKB ID" id="{entry_name}">',
             f'    <property type="UniProtKB accession" value="{acc}"/>',
             f'    <property type="UniParc ID" value="UPI{digest[:10]}"/>',
             f'    <property type="UniRef100 ID" value="UniRef100_{acc}"/>',
             f'    <property type="UniRef90 ID" value="{u90}"/>',
             f'    <property type="UniRef50 ID" value="{u50}"/>',
             f'    <property type="protein name" value="{desc}"/>',
             f'    <property type="source organism" value="{p["os"].replace("&", "&amp;")}"/>',
             f'    <property type="NCBI taxonomy" value="{p["ox"]}"/>',
             f'    <property type="length" value="{len(seq)}"/>']
    if seed:
        lines.append('    <property type="isSeed" value="true"/>')
    return [*lines, "  </dbReference>", f'  <sequence length="{len(seq)}" checksum="{digest[:16]}">{seq}</sequence>',
            f"</{tag}>"]


def build_release(root: Path, *, families: int = 24, release: str = "2026_03", seed: int = 0,
                  n_missing: int = 2, n_extra: int = 2, also: list[dict[str, str]] | None = None) -> MiniRelease:
    """``also``: more seed proteins first (``acc``, ``name``, ``desc``, ``os``, ``ox``, ``seq``), e.g. ones with an
    AlphaFold DB model among the fixtures."""
    rng = random.Random(seed)
    proteins = [*(also or []), *_proteins(families)]
    u90_dir, u50_dir = root / "uniref" / "uniref90", root / "uniref" / "uniref50"
    u90_dir.mkdir(parents=True, exist_ok=True)
    u50_dir.mkdir(parents=True, exist_ok=True)
    rel = MiniRelease(root, release, u90_dir / "uniref90.fasta.gz", u50_dir / "uniref50.xml.gz")
    fasta: list[str] = []
    xml = ['<?xml version="1.0" encoding="ISO-8859-1" ?>',
           '<UniRef50 xmlns="http://uniprot.org/uniref" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
           'xsi:schemaLocation="http://uniprot.org/uniref http://www.uniprot.org/support/docs/uniref.xsd" '
           f'releaseDate="2026-04-01" version="{release}">']
    all_u90: list[tuple[str, str]] = []  # (u90 id, u50 id) in file order
    u50_fasta: list[str] = []
    for i, p in enumerate(proteins):
        u50 = f"UniRef50_{p['acc']}"
        clusters = []
        for j in range(1 + rng.randrange(3)):
            acc = p["acc"] if j == 0 else f"A0A{i:03d}{j:04d}"
            rep_seq = p["seq"] if j == 0 else _mutate(p["seq"], 0.35, rng)
            members = [(acc, f"{p['name'] if j == 0 else acc + '_9ZZZZ'}", rep_seq)]
            for k in range(rng.randrange(3)):
                macc = f"A0A{i:03d}{j}{k:03d}"
                members.append((macc, f"{macc}_9ZZZZ", _mutate(rep_seq, 0.02, rng)))
            clusters.append((f"UniRef90_{acc}", members))
        total = sum(len(m) for _, m in clusters)
        u50_fasta.append(f">{u50} {p['desc']} n={total} Tax={p['os']} TaxID={p['ox']} RepID={p['name']}\n{p['seq']}\n")
        xml += [f'<entry id="{u50}" updated="2026-02-05">', f"<name>Cluster: {p['desc']}</name>",
                f'<property type="member count" value="{total}"/>',
                f'<property type="common taxon" value="{p["os"]}"/>',
                f'<property type="common taxon ID" value="{p["ox"]}"/>']
        first = True
        for u90, members in clusters:
            all_u90.append((u90, u50))
            rep_acc, rep_name, rep_seq = members[0]
            fasta.append(f">{u90} {p['desc']} n={len(members)} Tax={p['os']} TaxID={p['ox']} RepID={rep_name}\n"
                         f"{rep_seq}\n")
            for acc, name, seq in members:
                xml += _member_xml("representativeMember" if first else "member", name, acc, u90, u50, p, seq,
                                   seed=first)
                first = False
        xml.append("</entry>")
    # UniRef90 clusters the XML does not list (their entries lose them), and ids only the XML lists
    rel.missing = [u for u, _ in all_u90[-n_missing:]] if n_missing else []
    rel.extra = [f"UniRef90_X9{i:04d}" for i in range(n_extra)]
    text = "\n".join(xml)
    for u in rel.missing:
        text = text.replace(f'<property type="UniRef90 ID" value="{u}"/>',
                            f'<property type="UniRef90 ID" value="{u}_retired"/>')
    rel.extra += [f"{u}_retired" for u in rel.missing]
    for x in rel.extra[:n_extra]:  # planted as members of the first entry
        text = text.replace("</entry>", _member_block(x, all_u90[0][1]) + "\n</entry>", 1)
    text += "\n</UniRef50>\n"
    rel.membership = {u: p for u, p in all_u90 if u not in rel.missing}
    for u in rel.missing:
        rel.membership[f"{u}_retired"] = dict(all_u90)[u]
    for x in rel.extra[:n_extra]:
        rel.membership[x] = all_u90[0][1]
    rel.fasta_ids = [u for u, _ in all_u90]
    rel.uniref50_xml.write_bytes(gzip.compress(text.encode("latin-1"), mtime=0))
    rel.uniref90_fasta.write_bytes(gzip.compress("".join(fasta).encode(), mtime=0))
    (u50_dir / "uniref50.fasta.gz").write_bytes(gzip.compress("".join(u50_fasta).encode(), mtime=0))
    return rel


def _member_block(u90: str, u50: str) -> str:
    acc = u90.split("_", 1)[1]
    return "\n".join(["<member>", f'  <dbReference type="UniProtKB ID" id="{acc}_9ZZZZ">',
                      f'    <property type="UniProtKB accession" value="{acc}"/>',
                      f'    <property type="UniRef90 ID" value="{u90}"/>',
                      f'    <property type="UniRef50 ID" value="{u50}"/>', "  </dbReference>",
                      '  <sequence length="12" checksum="0000000000000000">MKVLAAGIVLLA</sequence>',
                      "</member>"])


def write_ftp_metadata(rel: MiniRelease, *, uniref50_release: str | None = None) -> None:
    """``RELEASE.metalink`` (Metalink 3 as UniProt writes it: size and MD5 per file, a ``<version>``) and a
    release note in each folder; ``uniref50_release`` puts the UniRef50 folder at another release."""
    for folder, release in ((rel.uniref90_fasta.parent, rel.release),
                            (rel.uniref50_xml.parent, uniref50_release or rel.release)):
        files = "".join(
            f'<file name="{f.name}"><size>{f.stat().st_size}</size><verification><hash type="md5">'
            f'{hashlib.md5(f.read_bytes()).hexdigest()}</hash></verification><resources><url type="ftp" '
            f'location="uk">ftp://ftp.ebi.ac.uk/pub/databases/uniprot/uniref/{folder.name}/{f.name}</url>'
            "</resources></file>" for f in sorted(folder.iterdir()) if f.name.endswith(".gz"))
        (folder / "RELEASE.metalink").write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="http://www.metalinker.org/" version="3.0">'
            "<publisher><name>UniProt Consortium</name><url>http://www.uniprot.org</url></publisher>"
            f"<version>{release}</version><files>{files}</files></metalink>\n")
        (folder / f"{folder.name}.release_note").write_text(f"{folder.name.replace('uniref', 'UniRef')} Release "
                                                            f"{release}\n")
