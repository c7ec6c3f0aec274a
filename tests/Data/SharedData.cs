using NUnit.Framework;

namespace ComposerSharp.Tests.Data;

/// <summary>Finds the read-only shared data folder (<c>../shared/data</c> next to the repository) by walking up from the test assembly.</summary>
internal static class SharedData
{
    /// <summary>The path of <c>shared/data/&lt;relative&gt;</c>; calls Assert.Ignore when it is absent.</summary>
    internal static string Require(string relative)
    {
        for (DirectoryInfo? dir = new(TestContext.CurrentContext.TestDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "shared", "data", relative);
            if (File.Exists(candidate) || Directory.Exists(candidate))
            {
                return candidate;
            }
        }

        Assert.Ignore($"Shared data 'shared/data/{relative}' was not found above {TestContext.CurrentContext.TestDirectory}; this test needs the ../shared/data folder next to the repository.");
        return string.Empty;
    }
}
