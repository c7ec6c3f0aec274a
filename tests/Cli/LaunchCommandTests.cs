using System.Diagnostics;
using ComposerSharp.Cli;
using ComposerSharp.Tests.Distributed;
using ComposerSharp.Tests.Support;
using NUnit.Framework;

namespace ComposerSharp.Tests.Cli;

[TestFixture]
public class LaunchCommandTests
{
    private static LaunchSettings Settings(int n = 2, int nodes = 1, int nodeRank = 0, string[]? hosts = null) =>
        new(n, nodes, nodeRank, hosts ?? Array.Empty<string>(), "127.0.0.1", 29500, null, null, "mpirun", new[] { "train", "--max-duration", "2ba" });

    [Test]
    public void OneMachineUsesSharedMemoryAndLoopbackOnly()
    {
        IReadOnlyList<string> cmd = LaunchCommand.MpirunCommand(Settings(), new[] { "dotnet", "/x/composersharp.dll" }, asRoot: true);
        Assert.That(string.Join(' ', cmd), Is.EqualTo(
            "mpirun --allow-run-as-root -np 2 --bind-to none --oversubscribe --mca btl self,vader --mca oob_tcp_if_include lo " +
            "-x MASTER_ADDR=127.0.0.1 -x MASTER_PORT=29500 dotnet /x/composersharp.dll launch-rank -- train --max-duration 2ba"));
    }

    [Test]
    public void SeveralMachinesGoThroughHostSlots()
    {
        IReadOnlyList<string> cmd = LaunchCommand.MpirunCommand(Settings(n: 4, nodes: 2, hosts: new[] { "node0", "node1" }), new[] { "composersharp" }, asRoot: false);
        Assert.That(string.Join(' ', cmd), Does.StartWith("mpirun -np 8 --bind-to none --host node0:4,node1:4 --mca btl self,vader,tcp"));
    }

    [Test]
    public void BadLaunchSettingsAreNamed()
    {
        string[] self = { "composersharp" };
        Assert.That(Assert.Throws<ArgumentException>(() => LaunchCommand.MpirunCommand(Settings(n: 0), self, false))!.Message, Does.Contain("-n 0"));
        Assert.That(Assert.Throws<ArgumentException>(() => LaunchCommand.MpirunCommand(Settings(nodes: 2), self, false))!.Message, Does.Contain("--hosts with 2 host names"));
        Assert.That(Assert.Throws<ArgumentException>(() => LaunchCommand.MpirunCommand(Settings(nodeRank: 1), self, false))!.Message, Does.Contain("on node 0 only"));
    }

    [Test]
    public void EachRankGetsItsShareOfTheCoresAsLibtorchThreadsUnlessOmpNumThreadsIsSet()
    {
        Assert.That(LaunchCommand.ThreadsPerRank(null, cores: 2, localWorldSize: 2), Is.EqualTo(1));
        Assert.That(LaunchCommand.ThreadsPerRank(null, cores: 16, localWorldSize: 4), Is.EqualTo(4));
        Assert.That(LaunchCommand.ThreadsPerRank(null, cores: 2, localWorldSize: 8), Is.EqualTo(1));
        Assert.That(LaunchCommand.ThreadsPerRank("3", cores: 16, localWorldSize: 4), Is.EqualTo(3));
        Assert.That(LaunchCommand.ThreadsPerRank("zero", cores: 16, localWorldSize: 4), Is.EqualTo(4));
        Assert.That(LaunchCommand.ThreadsPerRank("0", cores: 16, localWorldSize: 4), Is.EqualTo(4));
    }

    [Test]
    public void EachRankGetsComposersContractFromMpirunsVariables()
    {
        var ompi = new Dictionary<string, string>
        {
            ["OMPI_COMM_WORLD_RANK"] = "5", ["OMPI_COMM_WORLD_SIZE"] = "8", ["OMPI_COMM_WORLD_LOCAL_RANK"] = "1",
            ["OMPI_COMM_WORLD_LOCAL_SIZE"] = "4", ["MASTER_ADDR"] = "node0", ["MASTER_PORT"] = "1234",
        };
        IReadOnlyDictionary<string, string> vars = LaunchCommand.ContractVariables(k => ompi.GetValueOrDefault(k));
        Assert.That(vars, Is.EquivalentTo(new Dictionary<string, string>
        {
            ["RANK"] = "5", ["WORLD_SIZE"] = "8", ["LOCAL_RANK"] = "1", ["LOCAL_WORLD_SIZE"] = "4", ["NODE_RANK"] = "1",
            ["MASTER_ADDR"] = "node0", ["MASTER_PORT"] = "1234", ["CUDA_VISIBLE_DEVICES"] = "1",
        }));
        Assert.That(LaunchCommand.FormatRankPath("logs/n{node_rank}-r{rank}-of{world_size}.txt", vars), Is.EqualTo("logs/n1-r5-of8.txt"));
        Assert.Throws<InvalidOperationException>(() => LaunchCommand.ContractVariables(_ => null));
    }

    private static (int Code, string Out, string Err) Composersharp(string workingDirectory, params string[] args)
    {
        MpiJob.RequireMpirun();
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = workingDirectory };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "composersharp.dll"));
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["OMP_NUM_THREADS"] = "1";
        using Process p = Process.Start(psi)!;
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromSeconds(150)))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail("composersharp launch did not finish within 150 s");
        }

        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void LaunchTrainsTheDefaultModelOnTwoProcesses()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-launch-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        try
        {
            (int code, string output, string err) = Composersharp(folder, "launch", "-n", "2", "--stderr", "logs/rank{rank}.err", "--",
                "train", "--max-duration", "4ba", "--run-folder", Path.Combine(folder, "run"), "--progress-bar", "false",
                "--set", "train_loader.dataset.num_samples=256", "--set", "eval_loader.dataset.num_samples=32", "--set", "train_loader.batch_size=8");
            Assert.That(code, Is.EqualTo(0), output + err);
            Assert.That(output.Split("Run summary").Length - 1, Is.EqualTo(1), "only rank 0 prints the summary");
            Assert.That(output, Does.Contain("Rank 1 of 2 (local 1 of 2, node 0) joins with backend mpi"));

            // 4 batches of 8 samples on each of 2 ranks: the timestamp counts 64 global samples.
            Assert.That(output, Does.Match(@"samples\s*│\s*64\s"));
            Assert.That(Directory.GetFiles(Path.Combine(folder, "run", "checkpoints")).Select(Path.GetFileName).Order(), Is.EqualTo(new[] { "ep0-ba4-rank0.ckpt", "latest-rank0.ckpt" }));
            Assert.That(File.Exists(Path.Combine(folder, "logs", "rank1.err")), Is.True, "--stderr gives every rank its own file");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void ALaunchedEvaluationReportsGlobalCountsAndOnlyRankZeroMakesItsFolder()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-launch-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        string run = Path.Combine(folder, "run");
        string[] data = { "--set", "train_loader.dataset.num_samples=32", "--set", "eval_loader.dataset.num_samples=7", "--set", "train_loader.batch_size=8", "--set", "eval_loader.batch_size=4" };
        try
        {
            Assert.That(CliApp.Run(new[] { "train", "--max-duration", "1ba", "--run-folder", run, "--progress-bar", "false", "--eval-interval", "0" }.Concat(data).ToArray(), new StringWriter()), Is.Zero);
            string checkpoint = Directory.GetFiles(Path.Combine(run, "checkpoints"), "ep*-ba1-*.ckpt").Single();

            // 7 samples in unpadded shards of 4 and 3: one batch on each rank, side by side.
            (int code, string output, string err) = Composersharp(folder, new[] { "launch", "-n", "2", "--", "eval", "--load-path", checkpoint, "--run-folder", run, "--progress-bar", "false" }.Concat(data).ToArray());
            Assert.That(code, Is.EqualTo(0), output + err);
            Assert.That(output, Does.Match(@"batches\s*│\s*1\s").And.Match(@"samples\s*│\s*7\s"), output);
            Assert.That(Directory.GetDirectories(run, "eval-*"), Has.Length.EqualTo(1), "one eval folder, made by rank 0");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void AFailingLaunchedCommandEndsTheJobNonZero()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-launch-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        try
        {
            (int code, string output, string err) = Composersharp(folder, "launch", "-n", "2", "--", "train", "--max-duration", "2ba", "--load-path", Path.Combine(folder, "missing.ckpt"), "--progress-bar", "false");
            Assert.That(code, Is.Not.EqualTo(0), output + err);
            Assert.That(err, Does.Contain("missing.ckpt"));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [TestCase("--dist-timeout", "-5", "dist_timeout = -5 is not valid")]
    [TestCase("--dist-backend", "gloo", "dist_backend = 'gloo' is not known")]
    public void BadDistributedKeysAreConfigurationErrors(string option, string value, string expected)
    {
        var error = new StringWriter();
        TextWriter original = Console.Error;
        Console.SetError(error);
        try
        {
            int code = CliApp.Run(new[] { "train", option, value, "--max-duration", "1ba", "--progress-bar", "false" }, new StringWriter());
            Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode));
        }
        finally
        {
            Console.SetError(original);
        }

        Assert.That(error.ToString(), Does.Contain(expected));
    }
}
