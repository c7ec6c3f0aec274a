using ComposerSharp.Distributed;
using NUnit.Framework;

namespace ComposerSharp.Tests.Distributed;

[TestFixture]
public sealed class EnvironmentTests
{
    private static Func<string, string?> Vars(params (string, string)[] pairs)
    {
        var d = pairs.ToDictionary(p => p.Item1, p => p.Item2);
        return k => d.GetValueOrDefault(k);
    }

    [Test]
    public void NoVariablesMeansWorldSizeOne()
    {
        DistributedEnvironment env = DistributedEnvironment.FromVariables(Vars());
        Assert.That((env.Rank, env.WorldSize, env.LocalRank, env.LocalWorldSize, env.NodeRank, env.Source), Is.EqualTo((0, 1, 0, 1, 0, "none")));
    }

    [Test]
    public void ComposerVariablesAreRead()
    {
        DistributedEnvironment env = DistributedEnvironment.FromVariables(Vars(("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2"), ("NODE_RANK", "1"), ("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")));
        Assert.That(env, Is.EqualTo(new DistributedEnvironment(3, 4, 1, 2, 1, "10.0.0.1", 29500, "composer")));
    }

    [Test]
    public void OpenMpiVariablesAloneAreRead()
    {
        DistributedEnvironment env = DistributedEnvironment.FromVariables(Vars(("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1"), ("OMPI_COMM_WORLD_LOCAL_SIZE", "2")));
        Assert.That((env.Rank, env.WorldSize, env.LocalRank, env.LocalWorldSize, env.NodeRank, env.Source), Is.EqualTo((1, 2, 1, 2, 0, "ompi")));
    }

    [Test]
    public void DisagreeingSourcesAreAClearError()
    {
        var e = Assert.Throws<InvalidOperationException>(() => DistributedEnvironment.FromVariables(Vars(("RANK", "0"), ("WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"))));
        Assert.That(e!.Message, Does.Contain("RANK / OMPI_COMM_WORLD_RANK = 0 / 1"));
        Assert.That(DistributedEnvironment.FromVariables(Vars(("RANK", "1"), ("WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"))).Source, Is.EqualTo("composer+ompi"));
    }

    [TestCase("WORLD_SIZE", "two", "WORLD_SIZE='two'")]
    [TestCase("WORLD_SIZE", "0", "expected an integer ≥ 1")]
    [TestCase("RANK", "5", "RANK=5 is not below the world size 2")]
    [TestCase("MASTER_PORT", "70000", "MASTER_PORT='70000'")]
    public void BadValuesAreNamed(string name, string value, string expected)
    {
        var d = new Dictionary<string, string> { ["RANK"] = "0", ["WORLD_SIZE"] = "2", [name] = value };
        var e = Assert.Throws<InvalidOperationException>(() => DistributedEnvironment.FromVariables(k => d.GetValueOrDefault(k)));
        Assert.That(e!.Message, Does.Contain(expected));
    }
}
