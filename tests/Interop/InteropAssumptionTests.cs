using ComposerSharp.Interop;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Interop;

/// <summary>
/// The assumptions of the interop unit about libtorch 2.10 and TorchSharp 0.107 (symbols, enum values, non-public
/// fields): a TorchSharp or libtorch upgrade that breaks one fails here, with the assumption named.
/// </summary>
[TestFixture]
public class InteropAssumptionTests
{
    [Test]
    public void EveryAssumptionAboutLibtorchAndTorchSharpHolds()
    {
        IReadOnlyList<string> problems = InteropAssumptions.Check();
        Assert.That(problems, Is.Empty, string.Join(Environment.NewLine, problems));
    }

    [Test]
    public void AMissingTorchSharpFieldIsReportedByName()
    {
        var ex = Assert.Throws<MissingFieldException>(() => TorchSharpInternals.Field(typeof(torch.nn.Module), "_no_such_field", typeof(object)));
        Assert.That(ex!.Message, Does.Contain("Module._no_such_field").And.Contain("0.107"));
        var wrongType = Assert.Throws<MissingFieldException>(() => TorchSharpInternals.Field(typeof(torch.nn.Module), "_internal_submodules", typeof(string)));
        Assert.That(wrongType!.Message, Does.Contain("_internal_submodules").And.Contain("System.String"));
    }

    /// <summary>
    /// Unsafe code is allowed in the interop unit and, for its MPI/NCCL bindings only, in the Distributed project
    /// (unmanaged function pointers into libmpi/libnccl); nowhere else.
    /// </summary>
    [Test]
    public void OnlyTheInteropAndDistributedAssembliesMayUseUnsafeCode()
    {
        string root = Path.GetFullPath(Path.Combine(TestContext.CurrentContext.TestDirectory, "..", "..", "..", ".."));
        string props = File.ReadAllText(Path.Combine(root, "Directory.Build.props"));
        Assert.That(props, Does.Not.Contain("AllowUnsafeBlocks"));
        string[] projects = Directory.GetFiles(root, "*.csproj", SearchOption.AllDirectories).Where(p => !p.Contains("/obj/", StringComparison.Ordinal)).ToArray();
        Assert.That(projects.Where(p => File.ReadAllText(p).Contains("<AllowUnsafeBlocks>", StringComparison.Ordinal)).Select(Path.GetFileName).Order(),
            Is.EqualTo(new[] { "ComposerSharp.Distributed.csproj", "ComposerSharp.Interop.csproj" }));
    }

    [Test]
    public void InTheDistributedProjectOnlyTheMpiAndNcclBindingsAreUnsafe()
    {
        string root = Path.GetFullPath(Path.Combine(TestContext.CurrentContext.TestDirectory, "..", "..", "..", ".."));
        string[] unsafeFiles = Directory.GetFiles(Path.Combine(root, "Distributed"), "*.cs", SearchOption.AllDirectories)
            .Where(p => !p.Contains("/obj/", StringComparison.Ordinal) && !p.Contains("/bin/", StringComparison.Ordinal))
            .Where(p => System.Text.RegularExpressions.Regex.IsMatch(File.ReadAllText(p), @"\bunsafe\b"))
            .Select(Path.GetFileName).Order().ToArray()!;
        Assert.That(unsafeFiles, Is.EqualTo(new[] { "MpiLibrary.cs", "NcclLibrary.cs", "NcclProcessGroup.cs" }));
    }
}
