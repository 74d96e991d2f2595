"""Networks: reference parameter counts, output shapes at every supported size, narrow widths,
the face generator's training-only flip, the generator registry and initialisation details.

Forward passes use narrow widths so the whole file runs in seconds on a CPU.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn

from fileio import CheckpointError, save_checkpoint
from models import (
    AE_NETWORKS, AutoEncoder, ContentEncoder, DMI, Decoder, Discriminator, GENERATORS, InstanceClassifier,
    NoiseInjection, RefineGeneratorArt, RefineGeneratorFace, ResBlkE, ResBlkG, SELayer, StyleEncoder,
    build_generator, count_parameters)
from checkpoints import load_trained

NARROW = 8  # smallest width the decoder accepts (nfc // 8 channels at 512 px)
BATCH = 2  # BatchNorm in training mode needs more than one sample


def _style_vectors(nfc, batch=BATCH):
    return [torch.randn(batch, nfc * k) for k in (2, 4, 8)]


def _content_maps(nfc, batch=BATCH):
    return [torch.randn(batch, nfc * k, size, size) for k, size in ((2, 32), (4, 16), (8, 8))]


# --- 1. parameter parity with the reference (nfc = 64; construction only) -------------------

def _shoe_with_unused_reference_layers(size_out):
    """The shoe generator plus what the reference's shoe module builds but never uses: the art
    generator's style branch and style gates (the 3 extra style parameters are counted separately)."""
    art = RefineGeneratorArt(64, 512, size_out)
    return RefineGeneratorArt(64, 512, size_out, use_style=False), art.from_style, art.gates


# The reference's counts (../shared/REFERENCE.md): measured on its code with a bias-free depthwise
# convolution, as its torch_dwconv.DepthwiseConv2d 0.1.0 is.
REFERENCE_COUNTS = [
    ("style encoder + head, 512", lambda: (StyleEncoder(64, 512), InstanceClassifier(512, 500)),
     14_795_700),
    ("content encoder, 512", lambda: (ContentEncoder(64, 512),), 9_033_664),
    ("decoder, 512", lambda: (Decoder(64, 512),), 18_987_960),
    ("art 512->512", lambda: (RefineGeneratorArt(64, 512, 512),), 49_812_192),
    ("art 512->1024", lambda: (RefineGeneratorArt(64, 512, 1024),), 49_821_072),
    # without the 3 unused style parameters (nfc * (2 + 4 + 8) = 896): 49,821,968 with them
    ("shoe 512->1024 + its unused layers", lambda: _shoe_with_unused_reference_layers(1024), 49_821_072),
    ("face 512->512", lambda: (RefineGeneratorFace(64, 512, 512),), 5_659_328),
    ("face 512->1024", lambda: (RefineGeneratorFace(64, 512, 1024),), 5_676_688),
    ("discriminator 512", lambda: (Discriminator(64, 512),), 16_863_360),
    ("discriminator 1024", lambda: (Discriminator(64, 1024),), 24_074_368),
]


@pytest.mark.parametrize("build, expected", [c[1:] for c in REFERENCE_COUNTS],
                         ids=[c[0] for c in REFERENCE_COUNTS])
def test_parameter_count_matches_reference(build, expected):
    assert sum(count_parameters(m) for m in build()) == expected


def test_shoe_generator_count_is_the_reference_less_its_unused_layers():
    """Ours leaves out what never reaches the reference shoe generator's output (README, differences)."""
    shoe, style_branch, gates = _shoe_with_unused_reference_layers(1024)
    unused = count_parameters(style_branch) + count_parameters(gates) + 64 * (2 + 4 + 8)
    assert count_parameters(shoe) == 49_821_968 - unused == 32_473_040


def test_shoe_generator_is_the_art_generator_with_a_zero_style_map_and_no_gates():
    """Item 2 of the fidelity audit: the reference's shoe generator zeroes the 16 px style map (its
    4nfc channels still go through the 12nfc bottleneck) and skips the style gates."""
    torch.manual_seed(0)
    art = RefineGeneratorArt(NARROW, 64, 128).eval()
    shoe = RefineGeneratorArt(NARROW, 64, 128, use_style=False).eval()
    result = shoe.load_state_dict(art.state_dict(), strict=False)
    assert not result.missing_keys
    assert {k.split(".")[0] for k in result.unexpected_keys} == {"from_style", "gates"}
    with torch.no_grad():  # make the (trained-like) BN statistics non-trivial
        for m in art.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.bias.uniform_(-0.5, 0.5)
    shoe.load_state_dict(art.state_dict(), strict=False)
    image, vectors = torch.randn(BATCH, 3, 64, 64), _style_vectors(NARROW)
    art.from_style.forward = lambda v, noise=None: torch.zeros(v.shape[0], 4 * NARROW, 8, 8)
    for gate in art.gates.values():
        gate.forward = lambda v: torch.ones(())
    with torch.no_grad():
        torch.manual_seed(1)
        expected = art(image, vectors)
        torch.manual_seed(1)
        assert torch.allclose(shoe(image, vectors), expected, atol=1e-6)
    assert shoe.residual_16[0].main[0].num_features == 8 * NARROW + 4 * NARROW


def test_count_parameters_ignores_spectral_norm_buffers():
    conv = nn.utils.parametrizations.spectral_norm(nn.Conv2d(4, 6, 3, bias=False))
    assert count_parameters(conv) == 4 * 6 * 3 * 3


# --- 2. output shapes ------------------------------------------------------------------------

@pytest.mark.parametrize("size", [64, 128, 256, 512])
def test_encoders_give_fixed_shapes_at_every_size(size):
    nfc = NARROW
    style = StyleEncoder(nfc, size)
    vectors = style(torch.randn(BATCH, 3, size, size))
    assert [tuple(v.shape) for v in vectors] == [(BATCH, d) for d in style.vector_dims]
    assert style.vector_dims == (2 * nfc, 4 * nfc, 8 * nfc)
    maps = ContentEncoder(nfc, size)(torch.randn(BATCH, 1, size, size))
    assert [tuple(m.shape) for m in maps] == [(BATCH, nfc * k, s, s)
                                              for k, s in ((2, 32), (4, 16), (8, 8))]


@pytest.mark.parametrize("size", [64, 128, 256, 512])
def test_decoder_output_shape_and_range(size):
    out = Decoder(NARROW, size)(_content_maps(NARROW), _style_vectors(NARROW))
    assert out.shape == (BATCH, 3, size, size)
    assert out.abs().max() <= 1


@pytest.mark.parametrize("input_size", [32, 64, 128])
def test_autoencoder_resizes_inputs_to_its_size(input_size):
    ae = AutoEncoder(NARROW, 64)
    image, vectors = ae(torch.randn(BATCH, 1, input_size, input_size),
                        torch.randn(BATCH, 3, input_size, input_size))
    assert image.shape == (BATCH, 3, 64, 64)
    assert [v.shape[1] for v in vectors] == list(ae.style_encoder.vector_dims)
    assert [v.shape[1] for v in (vectors.fine, vectors.mid, vectors.coarse)] == [2 * NARROW, 4 * NARROW, 8 * NARROW]


def test_autoencoder_backward_reaches_every_parameter():
    ae = AutoEncoder(NARROW, 64)
    image, vectors = ae(torch.randn(BATCH, 1, 64, 64), torch.randn(BATCH, 3, 64, 64))
    (image.square().mean() + sum(v.square().mean() for v in vectors)).backward()
    assert all(p.grad is not None for p in ae.parameters())


GENERATOR_SIZES = [(64, 64), (64, 128), (128, 256), (256, 256), (512, 1024)]
GENERATOR_KINDS = {
    "art": lambda i, o: RefineGeneratorArt(NARROW, i, o),
    "shoe": lambda i, o: RefineGeneratorArt(NARROW, i, o, use_style=False),
    "face": lambda i, o: RefineGeneratorFace(NARROW, i, o, ngf=4),
}


@pytest.mark.parametrize("kind", sorted(GENERATOR_KINDS))
@pytest.mark.parametrize("size_in, size_out", GENERATOR_SIZES)
def test_refine_generator_output_shape(kind, size_in, size_out):
    gen = GENERATOR_KINDS[kind](size_in, size_out)
    with torch.no_grad():
        out = gen(torch.randn(BATCH, 3, size_in, size_in), _style_vectors(NARROW))
    assert out.shape == (BATCH, 3, size_out, size_out)
    assert out.abs().max() <= 1


@pytest.mark.parametrize("im_size, input_size, logits", [
    (512, 1024, 13), (512, 512, 5), (1024, 1024, 5), (128, 128, 5), (64, 64, 5)])
def test_discriminator_patch_logits(im_size, input_size, logits):
    disc = Discriminator(NARROW, im_size)
    with torch.no_grad():
        out = disc(torch.randn(BATCH, 3, input_size, input_size))
    assert out.shape == (BATCH, 1, logits, logits)


def test_discriminator_block_widths_and_skips_follow_the_reference():
    ndf = NARROW
    blocks = Discriminator(ndf, 1024).blocks
    assert [b.ch_out for b in blocks] == [ndf // 2, ndf, 2 * ndf, 4 * ndf, 8 * ndf, 16 * ndf]
    assert [b.skip is not None for b in blocks] == [False] * 3 + [True] * 3


# --- 3. narrow widths ------------------------------------------------------------------------

def test_se_layer_keeps_at_least_one_hidden_unit():
    se = SELayer(4)
    assert se.fc[0].weight.shape == (1, 4)
    assert se(torch.randn(BATCH, 4, 3, 3)).shape == (BATCH, 4, 3, 3)


def test_narrow_networks_have_no_empty_layers():
    nets = [AutoEncoder(NARROW, 512), RefineGeneratorArt(NARROW, 512, 1024)]
    for net in nets:
        assert all(p.numel() > 0 for p in net.parameters())


@pytest.mark.parametrize("build", [
    lambda: Decoder(12, 64), lambda: StyleEncoder(6, 64), lambda: Decoder(8, 1024),
    lambda: RefineGeneratorArt(8, 64, 256), lambda: RefineGeneratorFace(8, 1024, 1024),
    lambda: Discriminator(8, 2048)])
def test_unsupported_sizes_raise_value_error(build):
    with pytest.raises(ValueError):
        build()


# --- 4. the face generator flips its style map only in training ------------------------------

def _face_outputs(gen, image, vectors, seeds):
    outs = []
    for seed in seeds:
        torch.manual_seed(seed)
        # A fresh copy per call: in training mode each forward also advances the spectral-norm
        # power iteration, which would change the output slightly on its own.
        with torch.no_grad():
            outs.append(copy.deepcopy(gen)(image, vectors))
    return outs


def _distinct(tensors):
    return len({t.numpy().tobytes() for t in tensors})


def test_face_generator_flips_style_map_only_in_training():
    torch.manual_seed(0)
    gen = RefineGeneratorFace(NARROW, 64, 64, ngf=4)
    image, vectors = torch.randn(BATCH, 3, 64, 64), _style_vectors(NARROW)
    # Noise injections start at zero weight, so the flip is the only randomness left.
    seeds = range(8)
    assert _distinct(_face_outputs(gen.eval(), image, vectors, seeds)) == 1
    train_outs = _face_outputs(gen.train(), image, vectors, seeds)
    assert 2 <= _distinct(train_outs) <= 4  # at most 4 flip combinations
    assert torch.equal(train_outs[3], _face_outputs(gen, image, vectors, [3])[0])  # seeded


@pytest.mark.parametrize("name", ["art", "shoe", "face"])
def test_an_explicit_noise_source_feeds_every_noise_layer(name):
    """generator(..., noise): each NoiseInjection asks it for its own key (1, 2, ...; the art generator's
    latent is key 0) and uses what it returns; without it every call draws fresh noise."""
    gen = build_generator(name, NARROW, 64, 128).eval()
    layers = [m for m in gen.modules() if isinstance(m, NoiseInjection)]
    for m in layers:
        nn.init.ones_(m.weight)
    asked = []

    def noise(key, shape, like):
        asked.append(key)
        return torch.full(shape, 0.1 * key, dtype=like.dtype)

    image, vectors = torch.randn(BATCH, 3, 64, 64), _style_vectors(NARROW)
    with torch.no_grad():
        first, again = gen(image, vectors, noise), gen(image, vectors, noise)
        fresh = [gen(image, vectors) for _ in range(2)]
    has_latent = name != "face"
    assert asked == 2 * list(range(0 if has_latent else 1, len(layers) + 1))  # in module order, each once
    assert torch.equal(first, again) and not torch.equal(*fresh)
    layers[-1].weight.data.zero_()  # the last layer's noise no longer counts: its key's value did
    with torch.no_grad():
        assert not torch.equal(gen(image, vectors, noise), first)


# --- 5. registry -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, cls, use_style", [
    ("art", RefineGeneratorArt, True), ("shoe", RefineGeneratorArt, False), ("face", RefineGeneratorFace, None)])
def test_build_generator_by_architecture(name, cls, use_style):
    gen = build_generator(name, NARROW, 64, 128)
    assert type(gen) is cls
    assert (gen.nfc, gen.im_size_in, gen.im_size_out) == (NARROW, 64, 128)
    if use_style is not None:
        assert gen.use_style is use_style
        assert hasattr(gen, "from_style") is use_style
        assert (len(gen.gates) > 0) is use_style


def test_build_generator_unknown_name_names_the_known_ones():
    with pytest.raises(ValueError) as err:
        build_generator("demo", NARROW, 64, 64)  # a data set's name is not an architecture
    assert all(name in str(err.value) for name in GENERATORS)


def _gan_checkpoint(path, arch: dict, generator: nn.Module, ae: AutoEncoder) -> None:
    nets = {name: getattr(ae, name).state_dict() for name in AE_NETWORKS}
    save_checkpoint({"kind": "gan", "iteration": 3, "config": {"DATA_NAME": arch["preset"]},
                     "state": {"arch": arch, "networks": {**nets, "generator_ema": generator.state_dict(),
                                                          "generator": generator.state_dict()}}}, path)


@pytest.mark.parametrize("arch, cls, name", [
    ({"preset": "face", "generator": "face"}, RefineGeneratorFace, "face"),
    ({"preset": "demo", "generator": "shoe"}, RefineGeneratorArt, "shoe")])  # the stored architecture wins
def test_load_trained_builds_the_stored_generator(tmp_path, arch, cls, name):
    torch.manual_seed(0)
    ae, generator = AutoEncoder(NARROW, 64), GENERATORS[name](nfc=NARROW, im_size_in=64, im_size_out=128)
    _gan_checkpoint(tmp_path / "g.pt", {**arch, "nfc": NARROW, "im_size_ae": 64, "im_size_gan": 128}, generator, ae)
    trained = load_trained(tmp_path / "g.pt")
    assert type(trained.generator) is cls and trained.arch["generator"] == name and trained.iteration == 3
    assert all(torch.equal(v, generator.state_dict()[k]) for k, v in trained.generator.state_dict().items())
    assert all(torch.equal(v, ae.state_dict()[k]) for k, v in trained.ae.state_dict().items())
    assert not trained.ae.training and not any(p.requires_grad for p in trained.generator.parameters())
    with pytest.raises(CheckpointError, match="is a GAN-stage checkpoint .* needs an AE-stage checkpoint"):
        load_trained(tmp_path / "g.pt", kind="ae")


def test_load_trained_refuses_an_unknown_generator_in_one_line(tmp_path):
    ae, generator = AutoEncoder(NARROW, 64), RefineGeneratorArt(NARROW, 64, 64)
    _gan_checkpoint(tmp_path / "g.pt", {"preset": "demo", "generator": "cats", "nfc": NARROW, "im_size_ae": 64,
                                        "im_size_gan": 64}, generator, ae)
    with pytest.raises(CheckpointError, match="g.pt: a model whose networks do not load .*unknown generator 'cats'"):
        load_trained(tmp_path / "g.pt")


def test_the_autoencoder_reads_other_sizes_with_area_averaging():
    ae = AutoEncoder(NARROW, 64).eval()
    sketch, style = torch.rand(1, 1, 128, 128) * 2 - 1, torch.rand(1, 3, 128, 128) * 2 - 1
    area = nn.functional.avg_pool2d
    image, vectors = ae(sketch, style)
    assert torch.allclose(image, ae(area(sketch, 2), area(style, 2))[0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(vectors, ae.style(area(style, 2))))


# --- 6. initialisation details ---------------------------------------------------------------

@pytest.mark.parametrize("block", [ResBlkE(32), ResBlkG(32)], ids=["ResBlkE", "ResBlkG"])
def test_spectral_normed_batchnorm_gain_has_unit_norm(block):
    norms = [bn for bn in block.modules() if isinstance(bn, nn.BatchNorm2d)]
    assert norms
    for bn in norms:
        assert math.isclose(bn.weight.norm().item(), 1.0, rel_tol=1e-5)
        assert torch.all(bn.parametrizations.weight.original == 1)


def test_dmi_starts_near_identity():
    feat, mask = torch.randn(BATCH, 4, 5, 5), torch.rand(BATCH, 4, 5, 5)
    assert torch.allclose(DMI(4)(feat, mask), feat, atol=0.05 * feat.abs().max().item())


def test_instance_classifier_reset_bounds():
    head = InstanceClassifier(64, 10)
    bound = 1 / math.sqrt(64)
    assert head.linear.weight.abs().max() <= bound
    assert head.linear.bias.abs().max() <= 0.1 * bound
    before = head.linear.weight.clone()
    head.reset_parameters()
    assert not torch.equal(before, head.linear.weight)
    assert head(torch.randn(BATCH, 64)).shape == (BATCH, 10)


def test_discriminator_init_matches_reference_weights_init():
    torch.manual_seed(0)
    disc = Discriminator(64, 512)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    raw = torch.cat([m.parametrizations.weight.original.flatten() for m in convs])
    assert abs(raw.std().item() - 0.02) < 1e-3
    gains = torch.cat([m.weight for m in disc.modules() if isinstance(m, nn.BatchNorm2d)])
    biases = torch.cat([m.bias for m in disc.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(gains.mean().item() - 1) < 5e-3 and 0 < gains.std().item() < 0.03
    assert torch.all(biases == 0)
