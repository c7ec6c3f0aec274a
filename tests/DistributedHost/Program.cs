using ComposerSharp.Core;
using ComposerSharp.Distributed;
using TorchSharp;

namespace ComposerSharp.DistributedHost;

/// <summary>
/// Runs one multi-process test scenario on every rank: <c>host &lt;scenario&gt; &lt;output folder&gt;</c>. A scenario
/// checks what it can itself and writes the rest to <c>&lt;output&gt;/rank&lt;r&gt;.*</c> for the test to compare.
/// Any failure prints the rank's error and aborts the whole job (non-zero exit).
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length < 2)
        {
            Console.Error.WriteLine("usage: host <scenario> <output folder> [arguments]");
            return 2;
        }

        // Bitwise comparisons between processes need MKL's reproducible mode, switched on before MKL's first use.
        ComposerSharp.Core.Reproducibility.ConfigureDeterministicMode();
        torch.set_num_threads(1);
        Directory.CreateDirectory(args[1]);
        IProcessGroup? group = null;
        try
        {
            string? timeout = Environment.GetEnvironmentVariable("HOST_DIST_TIMEOUT_SECONDS");
            var options = new DistributedOptions { Timeout = TimeSpan.FromSeconds(timeout is null ? 120 : double.Parse(timeout, System.Globalization.CultureInfo.InvariantCulture)) };
            group = ProcessGroupFactory.Create(torch.CPU, options);
            var context = new ScenarioContext(group, args[1], args.Skip(2).ToArray());
            Action<ScenarioContext> scenario = args[0] switch
            {
                "collectives" => CollectiveScenarios.Run,
                "throw" => CollectiveScenarios.Throw,
                "hang" => CollectiveScenarios.Hang,
                _ => TrainerScenarios.Find(args[0]),
            };
            scenario(context);
            group.Barrier();
            File.WriteAllText(Path.Combine(args[1], $"rank{group.Rank}.done"), "ok");
            group.Dispose();
            return 0;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"[rank {group?.Rank.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "?"}] {e}");
            Console.Error.Flush();
            group?.Abort(3);
            return 3;
        }
    }
}

/// <summary>What a scenario gets.</summary>
public sealed record ScenarioContext(IProcessGroup Group, string Output, string[] Arguments)
{
    public string RankFile(string suffix) => Path.Combine(Output, $"rank{Group.Rank}.{suffix}");
}

/// <summary>Thrown when a check inside a scenario fails.</summary>
public sealed class CheckFailedException(string message) : Exception(message);
