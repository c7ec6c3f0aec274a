namespace ComposerSharp.Benchmarks;

/// <summary>
/// Options of one benchmark run. <see cref="Quick"/> shrinks repeats and step counts to a smoke run that checks
/// everything works in about a minute; its numbers are not meant to be read.
/// </summary>
/// <param name="Quick">Smoke run.</param>
/// <param name="Threads">libtorch intra-op threads (also given to the PyTorch peer).</param>
/// <param name="OutputFolder">Where the JSON results go.</param>
/// <param name="Python">The python interpreter for the peer, or null to look for one with torch.</param>
/// <param name="OmpWaitPolicy">The OpenMP wait policy in force (see <see cref="Harness.OpenMp"/>), passed to the peer too.</param>
internal sealed record Settings(bool Quick, int Threads, string OutputFolder, string? Python, string OmpWaitPolicy)
{
    /// <summary>The pieces part 4b times (names of pytorch_peer.py's PIECES), or null for all.</summary>
    public IReadOnlyList<string>? Pieces { get; init; }

    /// <summary>Warm-up and timed rounds of the LayerNorm kernel comparison.</summary>
    public (int Warmup, int Rounds) LayerNorm => Quick ? (1, 3) : (3, 25);

    /// <summary>Warm-up samples, steps per timed sample and rounds of the training-step comparison.</summary>
    public (int Warmup, int Steps, int Rounds) Step => Quick ? (1, 1, 2) : (1, 3, 6);

    /// <summary>Warm-up samples, steps per timed sample and rounds of the Trainer-versus-hand-written-loop comparison (single steps, finely interleaved).</summary>
    public (int Warmup, int Steps, int Rounds) Overhead => Quick ? (1, 1, 2) : (2, 1, 24);

    /// <summary>Warm-up samples, steps per timed sample and rounds of the PyTorch peer comparison.</summary>
    public (int Warmup, int Steps, int Rounds) Peer => Quick ? (1, 1, 1) : (1, 3, 6);
}
