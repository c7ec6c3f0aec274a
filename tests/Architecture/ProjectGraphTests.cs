using System.Xml.Linq;
using NUnit.Framework;

namespace ComposerSharp.Tests.Architecture;

/// <summary>
/// The library's project graph, as the ProjectReference items of its .csproj files state it, is exactly the layering
/// the architecture page describes: Core at the bottom (Composer's <c>composer/core</c>), everything else above it,
/// no edge pointing up. A new reference must be added here on purpose, so the layering cannot drift.
/// </summary>
[TestFixture]
public class ProjectGraphTests
{
    // Project (folder/assembly) -> the projects it may reference directly.
    private static readonly Dictionary<string, string[]> Allowed = new()
    {
        ["Interop/ComposerSharp.Interop"] = Array.Empty<string>(),
        ["Core/ComposerSharp.Core"] = new[] { "Interop/ComposerSharp.Interop" },
        ["Models/ComposerSharp.Models"] = new[] { "Core/ComposerSharp.Core" },
        ["Data/ComposerSharp.Data"] = new[] { "Core/ComposerSharp.Core" },
        ["Distributed/ComposerSharp.Distributed"] = new[] { "Core/ComposerSharp.Core", "Data/ComposerSharp.Data" },
        ["Algorithms/ComposerSharp.Algorithms"] = new[] { "Interop/ComposerSharp.Interop", "Core/ComposerSharp.Core", "Models/ComposerSharp.Models" },
        ["Trainer/ComposerSharp.Training"] = new[] { "Core/ComposerSharp.Core", "Algorithms/ComposerSharp.Algorithms", "Models/ComposerSharp.Models", "Data/ComposerSharp.Data", "Distributed/ComposerSharp.Distributed" },
        ["Inference/ComposerSharp.Inference"] = new[] { "Core/ComposerSharp.Core", "Models/ComposerSharp.Models", "Data/ComposerSharp.Data", "Algorithms/ComposerSharp.Algorithms" },
        ["Onnx/ComposerSharp.Onnx"] = new[] { "Core/ComposerSharp.Core", "Models/ComposerSharp.Models", "Algorithms/ComposerSharp.Algorithms" },
        ["Storage/ComposerSharp.Storage"] = new[] { "Data/ComposerSharp.Data" },
        ["Cli/ComposerSharp.Cli"] = new[] { "Trainer/ComposerSharp.Training", "Inference/ComposerSharp.Inference", "Onnx/ComposerSharp.Onnx", "Storage/ComposerSharp.Storage" },
    };

    [Test]
    public void LibraryProjectsReferenceOnlyTheLayersBelowThem()
    {
        string root = RepositoryRoot();
        foreach ((string project, string[] allowed) in Allowed)
        {
            string path = Path.Combine(root, project + ".csproj");
            Assert.That(File.Exists(path), Is.True, $"{path} exists");
            string[] actual = References(path, root);
            Assert.That(actual, Is.EquivalentTo(allowed), $"ProjectReferences of {project}");
        }
    }

    [Test]
    public void EveryLibraryProjectIsInTheAllowedGraph()
    {
        // A new library project (a .csproj outside tests/, samples/ and benchmarks/, and not the packaging project)
        // must be placed in the layering above.
        string root = RepositoryRoot();
        string[] projects = Directory.GetFiles(root, "*.csproj", SearchOption.AllDirectories)
            .Select(p => Path.GetRelativePath(root, p).Replace('\\', '/'))
            .Where(p => !p.StartsWith("tests/", StringComparison.Ordinal) && !p.StartsWith("samples/", StringComparison.Ordinal)
                        && !p.StartsWith("benchmarks/", StringComparison.Ordinal) && !p.StartsWith("Package/", StringComparison.Ordinal)
                        && !p.Contains("/bin/", StringComparison.Ordinal) && !p.Contains("/obj/", StringComparison.Ordinal))
            .Select(p => p[..^".csproj".Length])
            .ToArray();
        Assert.That(projects, Is.EquivalentTo(Allowed.Keys));
    }

    private static string[] References(string csproj, string root) =>
        XDocument.Load(csproj).Descendants("ProjectReference")
            .Select(e => Path.GetFullPath(Path.Combine(Path.GetDirectoryName(csproj)!, e.Attribute("Include")!.Value.Replace('\\', '/'))))
            .Select(p => Path.GetRelativePath(root, p).Replace('\\', '/')[..^".csproj".Length])
            .ToArray();

    private static string RepositoryRoot()
    {
        string? dir = TestContext.CurrentContext.TestDirectory;
        while (dir is not null && !File.Exists(Path.Combine(dir, "Trainer.sln")))
        {
            dir = Path.GetDirectoryName(dir);
        }

        Assert.That(dir, Is.Not.Null, "repository root not found above the test output");
        return dir!;
    }
}
