"""benchmark.py: Frechet distance forms and closed cases, KID, features, statistics cache, the CLI."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn
from PIL import Image

import benchmark as B
import weights
from conftest import Pooled
from datasets import DataError


def random_stats(d: int, n: int, seed: int, shift: float = 0.0):
    """(mu, sigma) of n correlated samples in d dimensions (SPD when n > d)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d) + shift
    return x.mean(0), np.cov(x, rowvar=False)


def sane_random_inception() -> nn.Module:
    """The FID Inception structure with random He-initialised convs (default init shrinks features to ~1e-7)."""
    torch.manual_seed(0)
    net = weights.build_fid_inception()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net


@pytest.fixture(scope="module")
def inception_state() -> dict:
    return sane_random_inception().state_dict()


@pytest.fixture(scope="module")
def features_model(inception_state) -> B.InceptionFeatures:
    net = weights.build_fid_inception()
    net.load_state_dict(inception_state)
    return B.InceptionFeatures(weights.FIDInceptionPool3(net), "random-test").eval()


def write_pngs(folder: Path, n: int, seed: int, size: int = 32) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        arr = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
        paths.append(folder / f"{i:03d}.png")
    return paths


# --------------------------------------------------------------------------- Frechet distance

def _frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2) -> float:
    """The same distance through scipy's matrix square root (pytorch-fid's form): the slow cross-check."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean).real)


def test_eigenvalue_form_matches_sqrtm_form():
    for seed in range(3):
        a, b = random_stats(64, 400, seed), random_stats(64, 400, seed + 10, shift=0.2)
        fast, slow = B.frechet_distance(*a, *b), _frechet_distance_sqrtm(*a, *b)
        assert fast == pytest.approx(slow, rel=1e-8)


def test_matches_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance
    a, b = random_stats(128, 600, 1), random_stats(128, 600, 2, shift=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its sqrtm(disp=False) call, on new scipy
        theirs = calculate_frechet_distance(*a, *b)
    assert B.frechet_distance(*a, *b) == pytest.approx(theirs, rel=1e-6)


def test_closed_forms():
    mu1, sigma = random_stats(32, 200, 0)
    mu2 = mu1 + np.linspace(-1, 1, 32)
    assert B.frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)
    assert abs(B.frechet_distance(mu1, sigma, mu1, sigma)) < 1e-8
    a, b = np.linspace(0.1, 3, 32), np.linspace(2, 0.5, 32)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert B.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_singular_covariances_give_a_finite_non_negative_distance():
    with pytest.warns(UserWarning):
        a = B.statistics(np.random.default_rng(0).normal(size=(20, 64)))
        b = B.statistics(np.random.default_rng(1).normal(size=(20, 64)) + 0.1)
    fid = B.frechet_distance(*a, *b)
    assert np.isfinite(fid) and fid >= 0


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="different dimensions"):
        B.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_statistics_warn_below_2048_samples_only():
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match="only 100 samples.*2048"):
        mu, sigma = B.statistics(rng.normal(size=(100, 4)))
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        B.statistics(rng.normal(size=(2048, 4)))


# --------------------------------------------------------------------------- KID

def test_kid_same_distribution_near_zero_shifted_positive():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same, same_std = B.kid(a, b, n_subsets=20, subset_size=200)
    shifted, _ = B.kid(a, b + 0.5, n_subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3 and shifted > 20 * abs(same) and shifted > 0
    assert B.kid(a[:30], b, n_subsets=3, subset_size=1000)[0] == pytest.approx(
        B.kid(a[:30], b, n_subsets=3, subset_size=30)[0])  # subset size capped at the smaller set


def test_kid_is_unbiased():
    """Over independent same-distribution draws the estimates average to 0 (a biased one stays > 0)."""
    rng = np.random.default_rng(1)
    values = [B.mmd2_unbiased(rng.normal(size=(50, 8)), rng.normal(size=(50, 8))) for _ in range(200)]
    sem = np.std(values) / np.sqrt(len(values))
    assert abs(np.mean(values)) < 4 * sem and min(values) < 0


# --------------------------------------------------------------------------- features

def test_inception_features_match_pytorch_fid_inceptionv3(monkeypatch, inception_state, features_model):
    from pytorch_fid import inception as pf

    def same_weights():
        net = weights.build_fid_inception()
        net.load_state_dict(inception_state)
        return net
    monkeypatch.setattr(pf, "fid_inception_v3", same_weights)  # its version downloads
    theirs = pf.InceptionV3([3]).eval()
    x = torch.rand(2, 3, 64, 48)  # [0, 1], not square: both resize to 299 bilinearly
    with torch.no_grad():
        expected = theirs(x)[0].flatten(1)
        ours = features_model(x * 2 - 1)
    assert ours.abs().mean() > 0.01
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_features_do_not_depend_on_batch_size(tmp_path, features_model):
    write_pngs(tmp_path, 4, seed=0)
    feats = [B.folder_features(tmp_path, features_model, "cpu", batch_size=bs) for bs in (1, 3, 4)]
    assert feats[0].shape == (4, 2048) and feats[0].dtype == np.float64
    for f in feats[1:]:
        np.testing.assert_allclose(f, feats[0], atol=1e-4, rtol=1e-4)


def test_injected_network_needs_its_own_cache_id():
    with pytest.raises(ValueError, match="extractor_id"):
        B.InceptionFeatures(Pooled())


def test_a_failing_batch_stops_the_run():
    def batches():
        yield torch.zeros(2, 3, 8, 8)
        raise RuntimeError("decoder exploded in batch 2")
    with pytest.raises(RuntimeError, match="batch 2"):
        B.extract_features(batches(), Pooled(), "cpu")


def test_an_unreadable_image_stops_the_folder_with_its_name(tmp_path):
    write_pngs(tmp_path, 2, seed=0)
    (tmp_path / "zz.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="zz.png"):
        B.folder_features(tmp_path, Pooled(), "cpu", batch_size=2)


def test_generated_features_equal_those_of_the_saved_pngs(tmp_path):
    g = torch.Generator().manual_seed(0)
    generate = lambda k: torch.rand(k, 3, 40, 40, generator=g) * 2.2 - 1.1  # noqa: E731  (out of range on purpose)
    model = B.InceptionFeatures(Pooled(), "pooled")
    feats = B.generated_features(generate, 5, 2, "cpu", save_dir=tmp_path / "gen", model=model)
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    again = B.folder_features(tmp_path / "gen", model, "cpu", batch_size=5)
    np.testing.assert_allclose(feats, again, atol=1e-6)


# --------------------------------------------------------------------------- statistics files and cache

def test_stats_round_trip_and_foreign_files(tmp_path):
    feats = np.random.default_rng(0).normal(size=(10, 6))
    with pytest.warns(UserWarning):
        stats = B.Stats.of(feats, keep_features=True, info={"folder": "x"})
    B.save_stats(tmp_path / "s.npz", stats)
    back = B.load_stats(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert back.n == 10 and back.info == {"folder": "x"} and back.features.shape == (10, 6)
    np.savez(tmp_path / "pytorch_fid.npz", mu=stats.mu, sigma=stats.sigma)  # pytorch-fid's layout
    assert B.load_stats(tmp_path / "pytorch_fid.npz").n == -1
    np.savez(tmp_path / "pickled.npz", mu=np.array([object()]), sigma=stats.sigma)
    with pytest.raises(B.StatsError, match="cannot read"):
        B.load_stats(tmp_path / "pickled.npz")
    np.savez(tmp_path / "bad.npz", mu=stats.mu, sigma=np.eye(3))
    with pytest.raises(B.StatsError, match="do not match"):
        B.load_stats(tmp_path / "bad.npz")


@pytest.mark.filterwarnings("ignore:FID statistics from only")
def test_cache_hits_and_misses(tmp_path):
    folder, cache = tmp_path / "imgs", tmp_path / "cache"
    paths = write_pngs(folder, 3, seed=0)
    built = []

    def model_fn():
        built.append(1)
        return B.InceptionFeatures(Pooled(), "pooled")

    def stats(**kw):
        return B.folder_stats(folder, model_fn, "cpu", cache_dir=cache, extractor_id="pooled", **kw)
    first = stats()
    assert first.info["cached"] is False and len(built) == 1 and len(list(cache.iterdir())) == 1
    second = stats()
    assert second.info["cached"] is True and len(built) == 1  # no network built on a hit
    np.testing.assert_array_equal(first.sigma, second.sigma)
    for kw in ({"size": 16}, {"max_samples": 2}):
        assert stats(**kw).info["cached"] is False  # resolution / sample count are in the key
    assert B.folder_stats(folder, model_fn, "cpu", cache_dir=cache, extractor_id="other").info["cached"] is False
    assert stats(keep_features=True).info["cached"] is False and stats(keep_features=True).info["cached"] is True
    write_pngs(tmp_path / "other", 1, seed=5)
    paths[1].write_bytes((tmp_path / "other" / "000.png").read_bytes())  # same name, new content
    changed = stats()
    assert changed.info["cached"] is False and not np.allclose(changed.mu, first.mu)
    assert len(built) == 6


# --------------------------------------------------------------------------- command line

@pytest.mark.filterwarnings("ignore:FID statistics from only")
def test_cli_stats_fid_kid_and_cache_on_tiny_folders(tmp_path, monkeypatch, inception_state):
    """One 2048-d FID only: its eigenvalues take seconds on 2 busy cores."""
    torch.save(inception_state, tmp_path / "inception.pth")
    monkeypatch.setenv("S2I_FID_INCEPTION_WEIGHTS", str(tmp_path / "inception.pth"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("download attempted"))
    real, fake, cache, out = tmp_path / "real", tmp_path / "fake", tmp_path / "cache", tmp_path / "res.json"
    write_pngs(real, 3, seed=0), write_pngs(fake, 3, seed=1, size=48)
    common = ["--device", "cpu", "--batch-size", "2", "--cache-dir", str(cache)]

    assert B.main(["stats", "--folder", str(real), "--out", str(tmp_path / "real.npz"), "--features", *common]) == 0
    args = ["fid", "--real", str(tmp_path / "real.npz"), "--fake", str(fake), "--kid", "--kid-subsets", "4",
            *common, "--out", str(out)]
    assert B.main(args) == 0
    res = json.loads(out.read_text())
    assert np.isfinite(res["fid"]) and res["fid"] > 0 and res["real"]["n"] == res["fake"]["n"] == 3
    assert res["fake"]["cached"] is False and res["kid"]["subset_size"] == 3 and res["argv"] == args

    monkeypatch.setenv("S2I_FID_INCEPTION_WEIGHTS", str(tmp_path / "gone.pth"))  # a hit must not need it
    for folder in (real, fake):
        assert B.main(["stats", "--folder", str(folder), "--out", str(tmp_path / "x.npz"), *common]) == 0
        assert B.load_stats(tmp_path / "x.npz").features is None  # not asked for, though the cache has them
    assert B.main(["fid", "--real", str(tmp_path / "x.npz"), "--fake", str(fake), "--kid", *common]) == 1
    assert B.main(["stats", "--folder", str(real), "--out", str(tmp_path / "y.npz"), "--size", "16", *common]) == 1
    assert B.main(["fid", "--real", str(tmp_path / "nope"), "--fake", str(fake), *common]) == 1
