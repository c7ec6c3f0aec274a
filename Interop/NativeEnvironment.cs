using System.Runtime.InteropServices;

namespace ComposerSharp.Interop;

/// <summary>
/// The C library's process environment, which native libraries (libgomp, cuBLAS) read. On Unix .NET keeps its own
/// copy, so <see cref="Environment.SetEnvironmentVariable(string, string)"/> alone does not reach them. Loads no
/// libtorch code, so it can run before TorchSharp's first call.
/// </summary>
internal static partial class NativeEnvironment
{
    /// <summary>Sets <paramref name="name"/> to <paramref name="value"/> in both the managed and the native environment.</summary>
    internal static void Set(string name, string value)
    {
        Environment.SetEnvironmentVariable(name, value);
        _ = OperatingSystem.IsWindows() ? WindowsPutEnv(name, value) : UnixSetEnv(name, value, 1);
    }

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int UnixSetEnv(string name, string value, int overwrite);

    [LibraryImport("ucrtbase", EntryPoint = "_putenv_s", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int WindowsPutEnv(string name, string value);
}
