namespace ComposerSharp.Tests.Support;

/// <summary>
/// NUnit categories. <see cref="Slow"/> marks the tests left out of the fast subset
/// (<c>dotnet test Trainer.sln --filter TestCategory!=Slow</c>, under a minute on 2 cores): tests that start a child
/// process or mpirun, train more than a few dozen steps, or take more than about a second.
/// </summary>
internal static class TestCategories
{
    /// <summary>Left out of the fast subset; the full suite (plain <c>dotnet test</c>, CI) runs it.</summary>
    public const string Slow = "Slow";
}
