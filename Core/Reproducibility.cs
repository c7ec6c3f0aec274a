using ComposerSharp.Interop;
using Microsoft.Extensions.Logging;
using TorchSharp;

namespace ComposerSharp.Core;

/// <summary>
/// Bitwise run-to-run reproducibility, Composer's <c>deterministic_mode</c>
/// (composer/utils/reproducibility.py, <c>configure_deterministic_mode</c>). Deterministic mode makes two runs with
/// the same seed, data, machine and libtorch thread count give bitwise-identical results:
/// <list type="bullet">
/// <item>MKL's Conditional Numerical Reproducibility (CNR) is switched on with the <c>AUTO</c> branch. Without it,
/// libtorch's bundled MKL picks code paths by the memory alignment of the operands, so the same matrix product can
/// round differently from call to call (measured on an AMD EPYC: 12 of 15 alignments of an [8,8]×[8,3] product
/// differ in the last bit). CNR can only be switched on before MKL's first computation in the process;</item>
/// <item>libtorch's deterministic algorithms (<c>torch.use_deterministic_algorithms(True)</c>), which also fills
/// uninitialised memory of new tensors;</item>
/// <item>for CUDA, what Composer sets: <c>CUBLAS_WORKSPACE_CONFIG=:4096:8</c> in the native environment, cuDNN
/// deterministic and its benchmark mode off.</item>
/// </list>
/// All of this is process-wide libtorch/MKL state, so it is read back from the native libraries rather than kept
/// here, and it cannot be switched off again.
/// </summary>
public static class Reproducibility
{
    /// <summary>
    /// The value Composer uses for <c>CUBLAS_WORKSPACE_CONFIG</c> (cuBLAS needs a fixed workspace to be
    /// deterministic; see the CUDA documentation on cuBLAS reproducibility).
    /// </summary>
    public const string CublasWorkspaceConfig = ":4096:8";

    /// <summary>
    /// Switches the process into deterministic mode (see the type's summary). Idempotent: a second call, or a call
    /// after <c>MKL_CBWR</c> was set in the environment before the process started, keeps the branch in force.
    /// Call it at program start, before any tensor computation; the Trainer calls it when constructed with
    /// <c>deterministicMode: true</c>.
    /// </summary>
    /// <param name="logger">Receives Composer's warning that deterministic mode costs speed, and what was set.</param>
    /// <exception cref="InvalidOperationException">
    /// MKL has already computed in this process without CNR, so CNR can no longer be switched on (MKL answers
    /// <c>MKL_CBWR_ERR_MODE_CHANGE_FAILURE</c>); the message says how to call it earlier. Or MKL refused the branch,
    /// or libtorch's deterministic-algorithm switch could not be found.
    /// </exception>
    public static void ConfigureDeterministicMode(ILogger? logger = null)
    {
        MklNative? mkl = MklNative.Instance.Value;
        string cnr;
        if (mkl is null)
        {
            // libtorch built without MKL (for example on ARM): no CNR to set, and nothing alignment-dependent of MKL's.
            cnr = "not applicable (libtorch has no MKL)";
        }
        else
        {
            int branch = mkl.GetBranch();
            if (branch == MklNative.BranchOff)
            {
                int rc = mkl.SetBranch(MklNative.BranchAuto);
                if (rc == MklNative.ErrModeChangeFailure)
                {
                    throw new InvalidOperationException(
                        "deterministic_mode needs MKL's Conditional Numerical Reproducibility, which MKL switches on only before its first computation in the process, " +
                        "and this process has already run an MKL computation (a matrix product, for example) without it. " +
                        "Construct the Trainer with deterministicMode: true, or call ComposerSharp.Core.Reproducibility.ConfigureDeterministicMode(), before any tensor computation " +
                        "(for instance as the first line of Main or in a test assembly's one-time setup), or start the process with MKL_CBWR=AUTO in its environment.");
                }

                if (rc != 0)
                {
                    throw new InvalidOperationException($"MKL refused Conditional Numerical Reproducibility branch AUTO with code {rc}; deterministic_mode cannot be honoured with this libtorch.");
                }

                branch = mkl.GetBranch();
            }

            cnr = MklNative.BranchName(branch);
        }

        AtenContextNative aten = AtenContextNative.Instance.Value
            ?? throw new InvalidOperationException("libtorch's at::Context switches (setDeterministicAlgorithms) were not found in torch_cpu; deterministic_mode cannot be honoured with this libtorch.");
        aten.SetDeterministicAlgorithms(true);
        aten.SetDeterministicCudnn(true);
        aten.SetBenchmarkCudnn(false);
        NativeEnvironment.Set("CUBLAS_WORKSPACE_CONFIG", CublasWorkspaceConfig);

        logger?.LogWarning("Deterministic mode is activated. This will negatively impact performance.");
        logger?.LogInformation(
            "Deterministic mode: MKL CNR {Cnr}, libtorch deterministic algorithms on, cuDNN deterministic, CUBLAS_WORKSPACE_CONFIG={Cublas}; results repeat bitwise on this machine with {Threads} libtorch threads.",
            cnr, CublasWorkspaceConfig, torch.get_num_threads());
    }

    /// <summary>
    /// Whether the process is in deterministic mode: MKL CNR on (or libtorch without MKL) and libtorch's
    /// deterministic algorithms on. Read from the native libraries, so it also sees settings made before start-up.
    /// </summary>
    public static bool IsDeterministicModeOn
    {
        get
        {
            MklNative? mkl = MklNative.Instance.Value;
            bool cnr = mkl is null || mkl.GetBranch() != MklNative.BranchOff;
            return cnr && AtenContextNative.Instance.Value?.DeterministicAlgorithms() == true;
        }
    }

    /// <summary>
    /// MKL's current CNR branch, as MKL names it (<c>OFF</c>, <c>AUTO</c>, <c>COMPATIBLE</c>, <c>AVX2</c>, …), or
    /// null when libtorch has no MKL. On AMD CPUs MKL reports <c>AUTO</c> even when <c>MKL_CBWR=AVX2</c> was asked for.
    /// </summary>
    public static string? MklCnrBranch => MklNative.Instance.Value is { } mkl ? MklNative.BranchName(mkl.GetBranch()) : null;

    /// <summary>
    /// Counts how many of <paramref name="alignments"/> − 1 memory alignments give a result that differs bitwise
    /// from the 64-byte-aligned one for the same small <c>linear</c> (input [8,8], weight [3,8], bias [3], Float32,
    /// fixed values). Zero in deterministic mode; on CPUs where MKL's code paths depend on alignment (seen on AMD
    /// EPYC) it is non-zero otherwise. Used by <c>composersharp env --determinism-probe</c> and the tests.
    /// </summary>
    /// <param name="alignments">Float offsets 0 … alignments−1 are tried (2 to 64).</param>
    /// <returns>The number of offsets whose result differs from offset 0.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="alignments"/> is outside 2 … 64.</exception>
    public static int AlignmentProbe(int alignments = 16)
    {
        if (alignments is < 2 or > 64)
        {
            throw new ArgumentOutOfRangeException(nameof(alignments), alignments, "The probe tries 2 to 64 alignments.");
        }

        using var scope = torch.NewDisposeScope();
        var generator = new torch.Generator(1234);
        torch.Tensor input = torch.randn(new long[] { 8, 8 }, generator: generator);
        torch.Tensor weight = torch.randn(new long[] { 3, 8 }, generator: generator);
        torch.Tensor bias = torch.randn(new long[] { 3 }, generator: generator);
        torch.Tensor reference = torch.nn.functional.linear(At(input, 0), At(weight, 0), At(bias, 0));
        int differing = 0;
        for (int offset = 1; offset < alignments; offset++)
        {
            torch.Tensor result = torch.nn.functional.linear(At(input, offset), At(weight, (offset * 3) % alignments), At(bias, (offset * 5) % alignments));
            if (!result.eq(reference).all().item<bool>())
            {
                differing++;
            }
        }

        return differing;

        // A copy of source whose first element sits `offset` floats past the start of a fresh buffer.
        static torch.Tensor At(torch.Tensor source, long offset)
        {
            torch.Tensor buffer = torch.zeros(source.numel() + 64);
            torch.Tensor view = buffer.narrow(0, offset, source.numel()).view(source.shape);
            view.copy_(source);
            return view;
        }
    }
}
