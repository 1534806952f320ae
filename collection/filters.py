"""Automatic filters: named rules that flag suspect dialogues with a reason, and never delete anything.

What a user gets: every generated or imported dialogue is checked for malformed output, too few turns, truncation
(finish_reason=length), refusal boilerplate, the wrong language, near-copies of its own seed, and near-duplicates
within the corpus; each hit is a DialogueFlag row (rule + reason) shown in the review queue, counted per run, and
excludable from exports.

The checks themselves (check_dialogue, near_duplicate_groups) are plain Python with no Django, so the generation
driver, the importer and the export can reuse them; flag_dialogue, flag_near_duplicates and filter_counts are the
thin database layer, correct on Postgres and on the embedded SQLite demo.
"""
import re
import threading
import zlib
from array import array
from functools import lru_cache

import numpy as np

RULES = {
    "malformed": "The output could not be parsed into turns cleanly, has no turns, or has an empty turn.",
    "too_few_turns": "Fewer turns (human + AI) than the run's minimum.",
    "truncated": "The model stopped at its token limit (finish_reason=length), so the last turn may be cut off.",
    "refusal": "An AI turn contains refusal boilerplate such as \"As an AI language model\".",
    "wrong_language": "The AI turns are confidently in another language than the run's.",
    "near_duplicate": "Near-copy (MinHash) of a dialogue with a lower id in the same corpus.",
    "echoes_seed": "The AI turns add almost nothing beyond the seed text.",
}
NEAR_DUPLICATE = "near_duplicate"

# Refusal boilerplate, matched case-insensitively in AI turns (after folding curly apostrophes). Phrases, not
# single words: "sorry" or "cannot" alone are ordinary in helpful answers.
REFUSAL_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    r"\bas an ai(?: language)? model\b",
    r"\bas a (?:large )?language model\b",
    r"\bas an ai(?: assistant)?,? i (?:cannot|can't|can not|am not able|am unable|don't|do not)\b",
    r"\bi(?:'m| am) (?:just |only )?an ai(?: language model| assistant)?,? (?:and |so )?i? ?(?:cannot|can't|can not|"
    r"am not able|am unable|don't|do not)\b",
    r"\bi(?:'m| am) (?:very |so |really )?sorry,? but i (?:cannot|can't|can not|am unable|am not able|won't|will not)\b",
    r"\bi (?:cannot|can't|am unable to|am not able to) (?:provide|assist|help|comply) with (?:that|this|your request)\b",
    r"\bi don't have (?:personal )?(?:opinions|feelings|emotions|beliefs|preferences)\b",
    r"\bi do not have (?:personal )?(?:opinions|feelings|emotions|beliefs|preferences)\b",
    # French, German, Spanish, Chinese: the same boilerplate in the languages teams collect in.
    r"\ben tant qu(?:e |')(?:mod[eè]le de langage|ia|intelligence artificielle|assistant ia)\b",
    r"\bje suis d[ée]sol[ée]e?,? mais je ne (?:peux|suis pas en mesure)\b",
    r"\bals (?:ki|k\.i\.|ki-sprachmodell|sprachmodell|künstliche intelligenz)\b",
    r"\bes tut mir leid,? aber ich (?:kann|darf)\b[^.!?\n]{0,40}?\b(?:nicht|keine[nmrs]?)\b",
    r"\bcomo (?:un )?(?:modelo de lenguaje|ia|inteligencia artificial)\b",
    r"\blo siento,? pero no puedo\b",
    r"作为一个?(?:人工智能|AI|语言模型|AI语言模型|AI助手)",
    r"(?:抱歉|对不起|很抱歉)[，,]?\s*(?:但)?我(?:不能|无法|没有办法)",
)]

# wrong_language: judge only text long enough for a language identifier to be right, and flag only when it is
# confident the text is NOT the expected language (short or mixed text stays unflagged).
LANGUAGE_MIN_CHARS = 40
LANGUAGE_MAX_CHARS = 5000  # the first few thousand characters tell the language; longer costs time for nothing
LANGUAGE_MIN_TOP = 0.5
LANGUAGE_MAX_EXPECTED = 0.05

# echoes_seed: share of the AI text's word pairs that are copied from the seed.
ECHO_THRESHOLD = 0.8

# near_duplicate: word shingles hashed into MinHash signatures (datasketch's "affine32" scheme, computed for many
# dialogues at once with numpy), candidates from LSH bands sized as datasketch's MinHashLSH sizes them, confirmed by
# the estimated Jaccard.
SHINGLE_WORDS = 3
MINHASH_SEED = 1
LSH_WEIGHTS = (0.05, 0.95)  # (false candidates, missed pairs)

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# One token per word; CJK scripts have no spaces, so each of their characters is a token.
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_FENCED_CODE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*\1[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")


# ---------------------------------------------------------------------------------------------------------------
# Pure checks


def tokens(text):
    return _TOKEN.findall(text.casefold())


def word_shingles(words, size):
    """Consecutive word tuples; a text shorter than `size` is one shingle of all its words."""
    if len(words) < size:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + size]) for i in range(len(words) - size + 1)}


def _ai_text(turns):
    return "\n".join(t.get("text", "") for t in turns if isinstance(t, dict) and t.get("role") == "ai")


def dialogue_text(turns):
    """The text a dialogue's MinHash signature is taken over: its turns' text, one turn a line."""
    return "\n".join(t.get("text", "") for t in turns if isinstance(t, dict) and isinstance(t.get("text"), str))


class _LanguageIdentifier:
    """py3langid's model, loaded once per process on first use (it takes most of a second)."""

    _lock = threading.Lock()
    _identifier = None

    @classmethod
    def get(cls):
        if cls._identifier is None:
            with cls._lock:
                if cls._identifier is None:
                    from py3langid.langid import MODEL_FILE, LanguageIdentifier

                    cls._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return cls._identifier


def detect_language(text):
    """(language code, probability, {code: probability}) for text, code blocks removed; None if too short."""
    prose = _INLINE_CODE.sub(" ", _FENCED_CODE.sub(" ", text))
    prose = " ".join(prose.split())[:LANGUAGE_MAX_CHARS]
    if len(prose) < LANGUAGE_MIN_CHARS:
        return None
    ranked = _LanguageIdentifier.get().rank(prose)
    top, probability = ranked[0]
    return top, float(probability), {code: float(p) for code, p in ranked}


def _check_language(ai_text, language):
    expected = (language or "").split("-")[0].split("_")[0].lower()
    if not expected:
        return None
    detected = detect_language(ai_text)
    if detected is None:
        return None
    top, probability, probabilities = detected
    if expected not in probabilities:
        return None  # a language the identifier does not know: no basis to judge
    if top != expected and probability >= LANGUAGE_MIN_TOP and probabilities[expected] <= LANGUAGE_MAX_EXPECTED:
        return f"AI text looks like '{top}' (confidence {probability:.2f}), expected '{expected}'"
    return None


def _check_echo(ai_text, seed_text):
    if not seed_text:
        return None
    ai = word_shingles(tokens(ai_text), 2)
    if not ai:
        return None
    seed = word_shingles(tokens(seed_text), 2)
    copied = len(ai & seed) / len(ai)
    if copied >= ECHO_THRESHOLD:
        return f"{copied:.0%} of the AI text's word pairs are copied from the seed"
    return None


def check_dialogue(*, turns, parse_error="", finish_reason="", seed_text="", language="en", min_turns=2):
    """The rules a single dialogue breaks, as [(rule, reason)], in RULES order (near_duplicate is a corpus pass)."""
    turns = turns if isinstance(turns, list) else []
    hits = []
    empty = [i + 1 for i, t in enumerate(turns) if not (isinstance(t, dict) and str(t.get("text") or "").strip())]
    if parse_error:
        hits.append(("malformed", f"parse error: {parse_error}"))
    elif not turns:
        hits.append(("malformed", "no turns"))
    elif empty:
        hits.append(("malformed", f"turn {empty[0]} is empty"))
    if len(turns) < min_turns:
        hits.append(("too_few_turns", f"{len(turns)} turn(s), fewer than {min_turns}"))
    if finish_reason == "length":
        hits.append(("truncated", "the model stopped at its token limit (finish_reason=length)"))
    for number, turn in enumerate(turns, start=1):
        if not (isinstance(turn, dict) and turn.get("role") == "ai" and isinstance(turn.get("text"), str)):
            continue
        text = turn["text"].replace("\u2019", "'")
        match = next((m for m in (p.search(text) for p in REFUSAL_PATTERNS) if m), None)
        if match:
            hits.append(("refusal", f"turn {number}: \"{match.group(0)}\""))
            break
    ai_text = _ai_text(turns)
    language_reason = _check_language(ai_text, language)
    if language_reason:
        hits.append(("wrong_language", language_reason))
    echo_reason = _check_echo(ai_text, seed_text)
    if echo_reason:
        hits.append(("echoes_seed", echo_reason))
    return hits


# datasketch is the reference for the MinHash values and the LSH bands, but it is not imported at run time: its
# package imports scipy (64 MB in every worker process, a fifth of the export's memory budget). The two small
# pieces below are written the way datasketch 2.0 computes them; tests/test_filters.py checks both against it.

def _minhash_permutations(num_perm):
    """The permutations (a, b) of datasketch's MinHash(num_perm, seed=MINHASH_SEED, scheme="affine32"): drawn from
    numpy's RandomState as datasketch draws them, `a` odd."""
    generator = np.random.RandomState(MINHASH_SEED)
    a = generator.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = generator.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(hv):
    # MurmurHash3's finalizer, as datasketch's affine32 scheme pre-mixes every input hash.
    hv = hv ^ (hv >> np.uint32(16))
    hv = hv * np.uint32(0x85EBCA6B)
    hv = hv ^ (hv >> np.uint32(13))
    hv = hv * np.uint32(0xC2B2AE35)
    return hv ^ (hv >> np.uint32(16))


_SHINGLE_MULTIPLIERS = (np.uint32(0x9E3779B1), np.uint32(0x85EBCA77), np.uint32(1))


def _shingle_hashes(text):
    """32-bit hashes of the text's word shingles: each word crc32-hashed once (stable across processes, unlike
    hash()), consecutive words combined with odd multipliers so word order matters."""
    words = tokens(text)
    if not words:
        return np.empty(0, dtype=np.uint32)
    try:
        encoded = list(map(str.encode, words))  # the fast path: no per-word Python frame
    except UnicodeEncodeError:  # a lone surrogate (never from the database, but the function takes any text)
        encoded = [w.encode("utf-8", "surrogatepass") for w in words]
    word_hashes = np.fromiter(map(zlib.crc32, encoded), dtype=np.uint32, count=len(words))
    if len(words) < SHINGLE_WORDS:
        combined = 0
        for position, value in enumerate(word_hashes.tolist()):
            combined = (combined * 0x01000193 + value + position) & 0xFFFFFFFF
        return np.array([combined], dtype=np.uint32)
    n = len(words) - SHINGLE_WORDS + 1
    combined = np.zeros(n, dtype=np.uint32)
    for offset, multiplier in enumerate(_SHINGLE_MULTIPLIERS[:SHINGLE_WORDS]):
        combined += word_hashes[offset:offset + n] * multiplier
    return combined


def minhash_signatures(texts, *, num_perm=128):
    """MinHash signatures (uint32 [len(texts), num_perm]) of the texts' word shingles, the values datasketch's
    MinHash(num_perm, seed=1, scheme="affine32") gives for the same 32-bit shingle hashes; a text without words
    gets all-max values. Many texts are hashed in one numpy pass, which is what makes 100k dialogues quick."""
    a, b = _minhash_permutations(num_perm)
    return _signatures(list(texts), a, b)


# Shingles per numpy pass: the [shingles, num_perm] uint32 matrix stays around 25 MB at 128 permutations.
_BATCH_SHINGLES = 50_000


def _signatures(texts, a, b):
    out = np.full((len(texts), len(a)), np.iinfo(np.uint32).max, dtype=np.uint32)
    pending, rows = [], []

    def flush():
        if pending:
            lengths = [len(h) for h in pending]
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            with np.errstate(over="ignore"):  # uint32 wraparound is the intended arithmetic mod 2^32
                # [num_perm, shingles]: each text's shingles are contiguous in memory, which makes reduceat
                # several times faster than the transposed layout.
                permuted = a[:, None] * _fmix32(np.concatenate(pending))[None, :]
                permuted += b[:, None]
            out[rows] = np.minimum.reduceat(permuted, starts, axis=1).T
            pending.clear()
            rows.clear()

    size = 0
    for index, text in enumerate(texts):
        hashes = _shingle_hashes(text)
        if len(hashes) > _BATCH_SHINGLES:  # one very long text: fold it in slices of its own
            for begin in range(0, len(hashes), _BATCH_SHINGLES):
                with np.errstate(over="ignore"):
                    permuted = _fmix32(hashes[begin:begin + _BATCH_SHINGLES])[:, None] * a[None, :] + b[None, :]
                out[index] = np.minimum(out[index], permuted.min(axis=0))
            continue
        if len(hashes):
            pending.append(hashes)
            rows.append(index)
            size += len(hashes)
        if size >= _BATCH_SHINGLES:
            flush()
            size = 0
    flush()
    return out


def _fmix64(h):
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


# Signatures are kept as their low 8 bits ("b-bit MinHash", Li & König): 128 bytes a text instead of 512, so a
# million dialogues fit in 128 MB and the Dialogue row can store its own. Two different 8-bit values still match by
# chance 1 time in 256; the similarity estimate corrects for that, and a band of r values is 8r bits wide, enough
# for chance band matches to be rare. A text without words gets all 0xFF ("no signature"), never grouped.
MINHASH_PERM = 128
_KEPT_BITS = 8
_CHANCE_MATCH = 1 / (1 << _KEPT_BITS)
_NO_WORDS = 0xFF


def minhash_bytes(texts, *, num_perm=MINHASH_PERM):
    """b-bit MinHash signatures of the texts' word shingles: uint8 [len(texts), num_perm], the low 8 bits of the
    values datasketch's MinHash(num_perm, seed=1, scheme="affine32") gives (minhash_signatures). What
    Dialogue.minhash stores (as bytes, MINHASH_PERM values) and signature_groups compares."""
    a, b = _minhash_permutations(num_perm)
    return _signatures(list(texts), a, b).astype(np.uint8)


def near_duplicate_groups(items, *, threshold=0.85, num_perm=MINHASH_PERM, chunk=5000):
    """{duplicate id: kept id} over an iterable of (integer id, text), streamed in chunks of `chunk`: the texts'
    signatures (minhash_bytes), then signature_groups. Memory is about 150 bytes a text, whatever its length."""
    id_parts, signature_parts = [], []
    batch = []

    def process():
        id_parts.append(np.fromiter((key for key, _ in batch), dtype=np.int64, count=len(batch)))
        signature_parts.append(minhash_bytes([text or "" for _, text in batch], num_perm=num_perm))
        batch.clear()

    for item in items:
        batch.append(item)
        if len(batch) >= chunk:
            process()
    process()
    return signature_groups(np.concatenate(id_parts), np.concatenate(signature_parts), threshold=threshold)


def signature_groups(ids, signatures, *, threshold=0.85):
    """{duplicate id: kept id} for integer ids and their minhash_bytes signatures (one row each): clusters of
    texts whose estimated Jaccard similarity of word shingles is >= threshold, linked transitively; the lowest id
    of each cluster is kept and is not a key. Texts without words are never grouped; a repeated id counts once
    (its first row)."""
    ids = np.asarray(ids, dtype=np.int64)
    signatures = np.asarray(signatures, dtype=np.uint8)
    has_words = has_signature(signatures)
    if not (has_words.all() and np.all(ids[1:] > ids[:-1])):
        # Drop texts without words and repeated ids, and sort by id.
        kept = np.flatnonzero(has_words)
        unique_ids, first = np.unique(ids[kept], return_index=True)
        ids, signatures = unique_ids, signatures[kept[first]]
    keys = _band_key_columns(signatures, lsh_bands(threshold, signatures.shape[1]))
    return candidate_groups(ids, keys, lambda left, right: similar(signatures[left], signatures[right], threshold))


@lru_cache(maxsize=64)
def lsh_bands(threshold, num_perm=MINHASH_PERM):
    """(bands, rows per band) as datasketch's MinHashLSH(threshold, num_perm, weights=LSH_WEIGHTS) picks them: of
    every bands x rows that fits in num_perm, the one with the least weighted sum of the false-candidate area
    (similarity below the threshold) and the missed area (above it) under the LSH S-curve; integrated with numpy
    instead of scipy. Weighted toward recall: datasketch's default weighs both equally and misses a quarter of the
    pairs at J=0.9 for threshold 0.85, while here a false candidate only costs one signature comparison."""
    below, above = np.linspace(0.0, threshold, 2001), np.linspace(threshold, 1.0, 2001)
    false_weight, miss_weight = LSH_WEIGHTS
    best, choice = float("inf"), (0, 0)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_candidates = np.trapezoid(1 - (1 - below ** rows) ** bands, below)
            misses = np.trapezoid((1 - above ** rows) ** bands, above)
            error = false_candidates * false_weight + misses * miss_weight
            if error < best:
                best, choice = error, (bands, rows)
    return choice


def has_signature(signatures, rows=65_536):
    """Rows of minhash_bytes signatures that are not "no words" (all _NO_WORDS), a slice at a time."""
    return np.concatenate([(signatures[start:start + rows] != _NO_WORDS).any(axis=1)
                           for start in range(0, len(signatures), rows)] or [np.empty(0, dtype=bool)])


def band_keys(signatures, bands):
    """uint32 [texts, bands]: one hash of each LSH band's values (equal bands give equal keys). 32 bits: a million
    texts share a key by chance about a hundred times a band, each one false candidate that `similar` rejects;
    48 bytes a text at the default threshold instead of the signature's 128 (what the export holds)."""
    keys = np.empty((len(signatures), bands[0]), dtype=np.uint32)
    for band, column in enumerate(_band_key_columns(signatures, bands)):
        keys[:, band] = column
    return keys


def _band_key_columns(signatures, bands):
    """Each LSH band's keys (uint64, one a text), a band at a time."""
    count, rows = bands
    return (_band_key(signatures[:, band * rows:(band + 1) * rows]) for band in range(count))


def similar(left, right, threshold):
    """Whether each pair of signature rows (uint8 [pairs, num_perm] each) has estimated Jaccard >= threshold."""
    matches = np.count_nonzero(left == right, axis=1) / left.shape[1]
    return (matches - _CHANCE_MATCH) / (1 - _CHANCE_MATCH) >= threshold


CONFIRM_PAIRS = 50_000  # candidate pairs confirmed at once: [pairs, 128] signature copies stay around 13 MB


def candidate_groups(ids, bands, confirm):
    """{duplicate id: kept id} over texts with sorted unique `ids`, given their LSH band keys one band at a time
    (`bands`: an iterable of arrays, one key per text, so only one band need be in memory): rows sharing a band's
    key are candidates, `confirm(left_rows, right_rows)` -> bool array says which pairs are near-duplicates
    (asked CONFIRM_PAIRS at a time), clusters link transitively and keep their lowest id."""
    if len(ids) < 2:
        return {}
    found = [_band_candidates(keys) for keys in bands]
    left, right = (np.concatenate(side) for side in zip(*found))
    # The same pair found by several bands is confirmed once.
    pairs = np.unique(left.astype(np.uint64) << np.uint64(32) | right.astype(np.uint64))
    left, right = (pairs >> np.uint64(32)).astype(np.int64), (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)
    if not len(left):
        return {}
    confirmed = np.concatenate([confirm(left[start:start + CONFIRM_PAIRS], right[start:start + CONFIRM_PAIRS])
                                for start in range(0, len(left), CONFIRM_PAIRS)])
    left, right = left[confirmed], right[confirmed]
    # Clusters over the rows in some pair only, renumbered 0..k-1 in row (so id) order.
    rows_in_pairs, renumbered = np.unique(np.concatenate((left, right)), return_inverse=True)
    labels = np.arange(len(rows_in_pairs))  # each row's lowest known row in its cluster
    _link(labels, renumbered[:len(left)], renumbered[len(left):])
    duplicates = np.flatnonzero(labels != np.arange(len(labels)))
    kept_ids = ids[rows_in_pairs]
    return dict(zip(kept_ids[duplicates].tolist(), kept_ids[labels[duplicates]].tolist()))


def _band_key(band):
    """One uint64 per row for a band of 8-bit values, computed in place: one number a row of memory."""
    keys = np.zeros(len(band), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in band.T:
            keys *= np.uint64(0x100000001B3)
            np.add(keys, column, out=keys, casting="unsafe")
            keys += np.uint64(1)
        return _fmix64(keys)


def _band_candidates(band_keys):
    """Row pairs that share this band's key: each row with the one before it and with the first of its run (not
    every pair, so a thousand copies of one text cost two thousand comparisons, not half a million)."""
    order = np.argsort(band_keys, kind="stable")  # stable: within a run, rows (ids) stay in ascending order
    sorted_keys = band_keys[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    if not same.any():
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    run_start = np.flatnonzero(np.concatenate(([True], ~same)))
    positions = np.flatnonzero(same) + 1
    heads = run_start[np.searchsorted(run_start, positions, side="right") - 1]
    left = np.concatenate((order[positions - 1], order[heads]))
    right = np.concatenate((order[positions], order[positions]))
    distinct = left != right
    return left[distinct], right[distinct]


def _link(labels, left, right):
    """Merge clusters along confirmed pairs: every row's label becomes the lowest row reachable from it
    (min-label propagation with pointer jumping, all in numpy)."""
    while len(left):
        lowest = np.minimum(labels[left], labels[right])
        before = labels.copy()
        np.minimum.at(labels, left, lowest)
        np.minimum.at(labels, right, lowest)
        np.minimum.at(labels, before, labels.copy())  # a lowered row lowers its old root, hence its whole cluster
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels[:] = jumped
        if np.array_equal(labels[left], labels[right]):
            return


# ---------------------------------------------------------------------------------------------------------------
# Database layer


def flag_dialogue(dialogue, *, language="en", min_turns=2, seed_text=None):
    """Run the per-dialogue rules on the dialogue's current turns and store the verdict: its flags for those rules
    are replaced (near_duplicate, owned by the corpus pass, is kept) and dialogue.is_flagged updated.
    Returns the rules that hit. seed_text defaults to the seed's text, else the topic."""
    from django.db import transaction

    from collection.models import Dialogue, DialogueFlag

    if seed_text is None:
        seed_text = dialogue.seed.text if dialogue.seed_id else dialogue.topic
    hits = check_dialogue(
        turns=dialogue.turns, parse_error=dialogue.parse_error, finish_reason=dialogue.finish_reason,
        seed_text=seed_text, language=language, min_turns=min_turns,
    )
    with transaction.atomic():
        DialogueFlag.objects.filter(dialogue_id=dialogue.pk).exclude(rule=NEAR_DUPLICATE).delete()
        DialogueFlag.objects.bulk_create(
            DialogueFlag(dialogue_id=dialogue.pk, rule=rule, reason=reason[:500]) for rule, reason in hits
        )
        is_flagged = bool(hits) or DialogueFlag.objects.filter(dialogue_id=dialogue.pk, rule=NEAR_DUPLICATE).exists()
        Dialogue.objects.filter(pk=dialogue.pk).update(is_flagged=is_flagged)
    dialogue.is_flagged = is_flagged
    return [rule for rule, _ in hits]


def dialogue_signatures(queryset, *, chunk_size=2000):
    """(ids, signatures) of the dialogues in queryset, in id order: int64 [n] and uint8 [n, MINHASH_PERM]. Stored
    signatures (Dialogue.minhash) are read; the missing ones (new or edited dialogues) are computed from the
    current turns and stored, each only if the dialogue is still at the version that was read, so a concurrent
    edit is never given a stale signature."""
    from django.db import connection, transaction

    from collection.models import Dialogue

    ids, blob, missing = array("q"), bytearray(), []
    no_signature = bytes([_NO_WORDS]) * MINHASH_PERM
    for pk, stored in queryset.order_by("pk").values_list("pk", "minhash").iterator(chunk_size=chunk_size):
        if stored is None or len(stored) != MINHASH_PERM:
            missing.append(len(ids))
            stored = no_signature
        ids.append(pk)
        blob += stored
    signatures = np.frombuffer(blob, dtype=np.uint8).reshape(len(ids), MINHASH_PERM)
    update = f"UPDATE {Dialogue._meta.db_table} SET minhash = %s WHERE id = %s AND version = %s"
    for start in range(0, len(missing), chunk_size):
        positions = missing[start:start + chunk_size]
        current = {pk: (version, turns) for pk, version, turns in Dialogue.objects.filter(
            pk__in=[ids[p] for p in positions]).values_list("pk", "version", "turns")}
        # A dialogue deleted meanwhile keeps "no signature": never grouped.
        found = [p for p in positions if ids[p] in current]
        signatures[found] = minhash_bytes(dialogue_text(current[ids[p]][1]) for p in found)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(update, [(signatures[p].tobytes(), ids[p], current[ids[p]][0]) for p in found])
    return np.frombuffer(ids, dtype=np.int64), signatures


def flag_near_duplicates(queryset, *, threshold=0.85, chunk_size=2000):
    """Flag near-duplicates among the dialogues in queryset (their current turns): in each cluster the lowest id
    stays unflagged and the others get a near_duplicate flag naming it. Replaces the previous near_duplicate flags
    of these dialogues, so re-running gives the same flags. Only new or edited dialogues are hashed
    (dialogue_signatures). Returns how many dialogues are flagged."""
    from django.db import transaction
    from django.db.models import Exists, OuterRef

    from collection.models import Dialogue, DialogueFlag

    ids, signatures = dialogue_signatures(queryset, chunk_size=chunk_size)
    groups = signature_groups(ids, signatures, threshold=threshold)
    del ids, signatures
    scope = queryset.values("pk")
    with transaction.atomic():
        previous = set(DialogueFlag.objects.filter(rule=NEAR_DUPLICATE, dialogue__in=scope)
                       .values_list("dialogue_id", flat=True))
        DialogueFlag.objects.filter(rule=NEAR_DUPLICATE, dialogue__in=scope).delete()
        DialogueFlag.objects.bulk_create(
            (DialogueFlag(dialogue_id=dup, rule=NEAR_DUPLICATE,
                          reason=f"near-duplicate of dialogue {kept} (estimated Jaccard >= {threshold:g})")
             for dup, kept in sorted(groups.items())),
            batch_size=1000,
        )
        changed = sorted(previous | set(groups))
        has_flag = Exists(DialogueFlag.objects.filter(dialogue=OuterRef("pk")))
        for start in range(0, len(changed), 1000):  # bounded IN lists: SQLite caps query parameters
            Dialogue.objects.filter(pk__in=changed[start:start + 1000]).update(is_flagged=has_flag)
    return len(groups)


def filter_counts(queryset):
    """{rule: number of dialogues in queryset it flags}, every rule present (0 when none), in one GROUP BY query."""
    from django.db.models import Count

    from collection.models import DialogueFlag

    counts = dict.fromkeys(RULES, 0)
    rows = (DialogueFlag.objects.filter(dialogue__in=queryset.values("pk")).order_by()
            .values_list("rule").annotate(n=Count("id")))
    counts.update(dict(rows))
    return counts
