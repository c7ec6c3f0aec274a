using ComposerSharp.Interop;

namespace ComposerSharp.Benchmarks.Harness;

/// <summary>
/// The OpenMP wait policy of libtorch's thread pool (libgomp reads <c>OMP_WAIT_POLICY</c> once, when libtorch is
/// loaded). With the default, idle OpenMP threads spin at every barrier; on a machine whose cores are shared with
/// other work, a spinning thread takes the core its partner needs and a 2-thread training step became 4–5 × slower
/// than with PASSIVE (threads sleep at barriers). The harness therefore sets PASSIVE when the variable is unset,
/// for itself and for the PyTorch peer, and records the policy with the results.
/// </summary>
internal static class OpenMp
{
    /// <summary>The variable's name.</summary>
    public const string WaitPolicyVariable = "OMP_WAIT_POLICY";

    /// <summary>
    /// Sets <c>OMP_WAIT_POLICY</c> in the native environment (where libgomp will read it) to <paramref name="policy"/>
    /// unless the user already set it; returns the policy in force. Must run before the first TorchSharp call.
    /// </summary>
    public static string ApplyWaitPolicy(string policy)
    {
        string? existing = Environment.GetEnvironmentVariable(WaitPolicyVariable);
        if (!string.IsNullOrEmpty(existing))
        {
            return existing;
        }

        // .NET keeps its own copy of the environment on Unix; native code (libgomp) reads the C library's.
        NativeEnvironment.Set(WaitPolicyVariable, policy);
        return policy;
    }
}
