using System.Reflection;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using TorchSharp;

namespace ComposerSharp.Events;

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
                        "Construct the Trainer with deterministicMode: true, or call ComposerSharp.Events.Reproducibility.ConfigureDeterministicMode(), before any tensor computation " +
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
        SetNativeEnvironmentVariable("CUBLAS_WORKSPACE_CONFIG", CublasWorkspaceConfig);

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

    /// <summary>
    /// Sets a variable in the native process environment, which native libraries (cuBLAS) read; .NET's
    /// <see cref="Environment.SetEnvironmentVariable(string, string)"/> changes only the managed copy on Linux.
    /// </summary>
    private static void SetNativeEnvironmentVariable(string name, string value)
    {
        Environment.SetEnvironmentVariable(name, value);
        if (OperatingSystem.IsWindows())
        {
            _ = NativeEnvironment.WindowsPutEnv(name, value);
        }
        else
        {
            _ = NativeEnvironment.UnixSetEnv(name, value, 1);
        }
    }

    private static class NativeEnvironment
    {
        [DllImport("libc", EntryPoint = "setenv", CharSet = CharSet.Ansi)]
        internal static extern int UnixSetEnv(string name, string value, int overwrite);

        [DllImport("ucrtbase", EntryPoint = "_putenv_s", CharSet = CharSet.Ansi)]
        internal static extern int WindowsPutEnv(string name, string value);
    }
}

/// <summary>
/// MKL's CNR service functions exported by libtorch's bundled MKL (<c>mkl_serv_cbwr_get</c>/<c>_set</c>, the
/// functions behind MKL's documented <c>mkl_cbwr_get</c>/<c>mkl_cbwr_set</c>), or null when libtorch has no MKL.
/// </summary>
internal sealed unsafe class MklNative
{
    // Values of mkl_cbwr.h.
    internal const int BranchQuery = 1;
    internal const int BranchOff = 1;
    internal const int BranchAuto = 2;
    internal const int ErrModeChangeFailure = -8;

    internal static readonly Lazy<MklNative?> Instance = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);

    private readonly delegate* unmanaged<int, int> _get;
    private readonly delegate* unmanaged<int, int> _set;

    private MklNative(IntPtr get, IntPtr set)
    {
        _get = (delegate* unmanaged<int, int>)get;
        _set = (delegate* unmanaged<int, int>)set;
    }

    internal int GetBranch() => _get(BranchQuery);

    internal int SetBranch(int branch) => _set(branch);

    internal static string BranchName(int branch) => branch switch
    {
        1 => "OFF",
        2 => "AUTO",
        3 => "COMPATIBLE",
        4 => "SSE2",
        6 => "SSSE3",
        7 => "SSE4_1",
        8 => "SSE4_2",
        9 => "AVX",
        10 => "AVX2",
        12 => "AVX512",
        14 => "AVX512_E1",
        _ when (branch & 0x10000) != 0 => BranchName(branch & ~0x10000) + ",STRICT",
        _ => $"branch {branch}",
    };

    private static MklNative? Load()
    {
        IntPtr handle = TorchCpuLibrary.Handle();
        return NativeLibrary.TryGetExport(handle, "mkl_serv_cbwr_get", out IntPtr get) && NativeLibrary.TryGetExport(handle, "mkl_serv_cbwr_set", out IntPtr set)
            ? new MklNative(get, set)
            : null;
    }
}

/// <summary>
/// libtorch's global <c>at::Context</c> switches for determinism (aten/src/ATen/Context.h), which TorchSharp 0.107
/// does not expose: member functions called with the context from <c>at::globalContext()</c> as <c>this</c>.
/// Itanium C++ ABI names (Linux, macOS), seen working with libtorch_cpu.so 2.10; null where they do not resolve.
/// </summary>
internal sealed unsafe class AtenContextNative
{
    internal static readonly Lazy<AtenContextNative?> Instance = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);

    private readonly IntPtr _context;
    private readonly delegate* unmanaged<IntPtr, int, int, void> _setDeterministicAlgorithms;
    private readonly delegate* unmanaged<IntPtr, byte> _deterministicAlgorithms;
    private readonly delegate* unmanaged<IntPtr, int, void> _setDeterministicCudnn;
    private readonly delegate* unmanaged<IntPtr, int, void> _setBenchmarkCudnn;

    private AtenContextNative(IntPtr context, IntPtr[] functions)
    {
        _context = context;
        _setDeterministicAlgorithms = (delegate* unmanaged<IntPtr, int, int, void>)functions[0];
        _deterministicAlgorithms = (delegate* unmanaged<IntPtr, byte>)functions[1];
        _setDeterministicCudnn = (delegate* unmanaged<IntPtr, int, void>)functions[2];
        _setBenchmarkCudnn = (delegate* unmanaged<IntPtr, int, void>)functions[3];
    }

    // C++ bool arguments are passed as zero-extended ints, which both GCC- and Clang-built callees accept.
    internal void SetDeterministicAlgorithms(bool on) => _setDeterministicAlgorithms(_context, on ? 1 : 0, 0);

    internal bool DeterministicAlgorithms() => _deterministicAlgorithms(_context) != 0;

    internal void SetDeterministicCudnn(bool on) => _setDeterministicCudnn(_context, on ? 1 : 0);

    internal void SetBenchmarkCudnn(bool on) => _setBenchmarkCudnn(_context, on ? 1 : 0);

    private static readonly string[] Names =
    {
        "_ZN2at7Context26setDeterministicAlgorithmsEbb",
        "_ZNK2at7Context23deterministicAlgorithmsEv",
        "_ZN2at7Context21setDeterministicCuDNNEb",
        "_ZN2at7Context17setBenchmarkCuDNNEb",
    };

    private static AtenContextNative? Load()
    {
        if (OperatingSystem.IsWindows())
        {
            // The MSVC names of these member functions were not verified (no Windows machine here).
            return null;
        }

        IntPtr handle = TorchCpuLibrary.Handle();
        if (!NativeLibrary.TryGetExport(handle, "_ZN2at13globalContextEv", out IntPtr globalContext))
        {
            return null;
        }

        var functions = new IntPtr[Names.Length];
        for (int i = 0; i < Names.Length; i++)
        {
            if (!NativeLibrary.TryGetExport(handle, Names[i], out functions[i]))
            {
                return null;
            }
        }

        IntPtr context = ((delegate* unmanaged<IntPtr>)globalContext)();
        return new AtenContextNative(context, functions);
    }
}

/// <summary>The handle of libtorch's <c>torch_cpu</c> library, loaded by TorchSharp.</summary>
internal static class TorchCpuLibrary
{
    /// <summary>Loads TorchSharp's natives (which makes torch_cpu resident) and returns torch_cpu's handle.</summary>
    /// <exception cref="DllNotFoundException">torch_cpu cannot be found next to TorchSharp.</exception>
    internal static IntPtr Handle()
    {
        torch.InitializeDeviceType(DeviceType.CPU);
        string library = OperatingSystem.IsWindows() ? "torch_cpu.dll" : OperatingSystem.IsMacOS() ? "libtorch_cpu.dylib" : "libtorch_cpu.so";
        Assembly torchAssembly = typeof(torch).Assembly;
        if (NativeLibrary.TryLoad(library, torchAssembly, null, out IntPtr handle) || NativeLibrary.TryLoad(library, out handle))
        {
            return handle;
        }

        throw new DllNotFoundException($"{library} could not be found next to TorchSharp on {RuntimeInformation.OSDescription}.");
    }
}
