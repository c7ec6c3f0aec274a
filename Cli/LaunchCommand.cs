using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Reflection;

namespace ComposerSharp.Cli;

/// <summary>What <c>composersharp launch</c> was asked for.</summary>
/// <param name="ProcessesPerNode">Ranks per machine (<c>-n</c>).</param>
/// <param name="Nodes">Machines (<c>--nnodes</c>).</param>
/// <param name="NodeRank">This machine's index (<c>--node-rank</c>); mpirun starts every machine's ranks from node 0.</param>
/// <param name="Hosts">Host names of the machines, node 0 first (<c>--hosts</c>); localhost for one machine.</param>
/// <param name="MasterAddr">Rank 0's address (<c>MASTER_ADDR</c>).</param>
/// <param name="MasterPort">Rank 0's port (<c>MASTER_PORT</c>).</param>
/// <param name="Stdout">Per-rank file for standard output, with <c>{rank}</c>, <c>{local_rank}</c>, <c>{node_rank}</c>, <c>{world_size}</c>; null keeps the console.</param>
/// <param name="Stderr">Per-rank file for standard error (same placeholders), or null.</param>
/// <param name="Mpirun">The mpirun executable.</param>
/// <param name="Command">The composersharp command each rank runs (e.g. <c>train --config x.yaml</c>).</param>
public sealed record LaunchSettings(
    int ProcessesPerNode,
    int Nodes,
    int NodeRank,
    IReadOnlyList<string> Hosts,
    string MasterAddr,
    int MasterPort,
    string? Stdout,
    string? Stderr,
    string Mpirun,
    IReadOnlyList<string> Command);

/// <summary>
/// <c>composersharp launch -n N [--nnodes K --hosts h0,h1 --node-rank 0 --master-addr A --master-port P
/// --stdout F --stderr F] -- train …</c>: Composer's launcher contract (composer/cli/launcher.py: every rank gets
/// <c>RANK</c>, <c>WORLD_SIZE</c>, <c>LOCAL_RANK</c>, <c>LOCAL_WORLD_SIZE</c>, <c>NODE_RANK</c>, <c>MASTER_ADDR</c>,
/// <c>MASTER_PORT</c>) carried out by Open MPI's <c>mpirun</c>, which starts the N·K ranks (on several machines
/// with <c>--host</c>), forwards their output and, when one rank fails, ends the others and exits non-zero.
/// Each rank runs <c>composersharp launch-rank -- …</c>, which sets the contract's variables from mpirun's and
/// then runs the command in the same process.
/// </summary>
public static class LaunchCommand
{
    /// <summary>The hidden per-rank entry point.</summary>
    public const string RankCommand = "launch-rank";

    /// <summary>The <c>launch</c> and hidden <c>launch-rank</c> commands.</summary>
    public static IEnumerable<Command> Build(TextWriter? output = null)
    {
        var n = new Option<int>("-n", "--nproc") { Description = "Processes (ranks) per machine.", DefaultValueFactory = _ => 1 };
        var nnodes = new Option<int>("--nnodes") { Description = "Machines.", DefaultValueFactory = _ => 1 };
        var nodeRank = new Option<int>("--node-rank") { Description = "This machine's index; mpirun starts every machine's ranks, so launch runs on node 0 only.", DefaultValueFactory = _ => 0 };
        var hosts = new Option<string?>("--hosts") { Description = "Comma-separated host names of the machines, node 0 first (needed when --nnodes > 1; passwordless ssh between them)." };
        var addr = new Option<string?>("--master-addr") { Description = "Address of rank 0's machine (MASTER_ADDR); the first host by default." };
        var port = new Option<int>("--master-port") { Description = "Port on rank 0's machine (MASTER_PORT).", DefaultValueFactory = _ => 29500 };
        var stdout = new Option<string?>("--stdout") { Description = "Per-rank stdout file, e.g. logs/rank{rank}.out ({rank}, {local_rank}, {node_rank}, {world_size}); default: the console." };
        var stderr = new Option<string?>("--stderr") { Description = "Per-rank stderr file (same placeholders); default: the console." };
        var mpirun = new Option<string>("--mpirun") { Description = "The mpirun executable.", DefaultValueFactory = _ => "mpirun" };
        var rest = new Argument<string[]>("command") { Description = "The command each rank runs, after --: e.g. -- train --config my.yaml", Arity = ArgumentArity.OneOrMore };
        var launch = new Command("launch", "Run a command on N processes (and K machines) for data-parallel training, through mpirun.")
        {
            n, nnodes, nodeRank, hosts, addr, port, stdout, stderr, mpirun, rest,
        };
        launch.SetAction(parse =>
        {
            try
            {
                int perNode = parse.GetValue(n);
                int nodes = parse.GetValue(nnodes);
                IReadOnlyList<string> hostList = (parse.GetValue(hosts) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                var settings = new LaunchSettings(perNode, nodes, parse.GetValue(nodeRank), hostList,
                    parse.GetValue(addr) ?? (hostList.Count > 0 ? hostList[0] : "127.0.0.1"), parse.GetValue(port),
                    parse.GetValue(stdout), parse.GetValue(stderr), parse.GetValue(mpirun)!, parse.GetValue(rest) ?? Array.Empty<string>());
                return Launch(settings, SelfCommand(), Environment.UserName == "root");
            }
            catch (ArgumentException e)
            {
                Console.Error.WriteLine($"composersharp launch: {e.Message}");
                return 2;
            }
        });

        var rankRest = new Argument<string[]>("command") { Arity = ArgumentArity.OneOrMore };
        var rank = new Command(RankCommand, "Per-rank entry point of launch (sets RANK, WORLD_SIZE, … from mpirun's variables).") { Hidden = true };
        rank.Arguments.Add(rankRest);
        rank.SetAction(parse => RunRank(parse.GetValue(rankRest) ?? Array.Empty<string>(), output));
        return new[] { launch, rank };
    }

    /// <summary>The mpirun command line (executable first) for <paramref name="settings"/>.</summary>
    /// <param name="settings">What was asked.</param>
    /// <param name="self">How to start composersharp (e.g. <c>dotnet /path/composersharp.dll</c>).</param>
    /// <param name="asRoot">Add <c>--allow-run-as-root</c>.</param>
    /// <exception cref="ArgumentException">A value is out of range or inconsistent; the message names it.</exception>
    public static IReadOnlyList<string> MpirunCommand(LaunchSettings settings, IReadOnlyList<string> self, bool asRoot)
    {
        ArgumentNullException.ThrowIfNull(settings);
        if (settings.ProcessesPerNode < 1)
        {
            throw new ArgumentException($"-n {settings.ProcessesPerNode} is not valid; expected at least 1 process per machine.");
        }

        if (settings.Nodes < 1)
        {
            throw new ArgumentException($"--nnodes {settings.Nodes} is not valid; expected at least 1 machine.");
        }

        if (settings.NodeRank != 0)
        {
            throw new ArgumentException($"--node-rank {settings.NodeRank}: mpirun starts the ranks of every machine from node 0, so run 'composersharp launch' on node 0 only (with --hosts).");
        }

        if (settings.Nodes > 1 && settings.Hosts.Count != settings.Nodes)
        {
            throw new ArgumentException($"--nnodes {settings.Nodes} needs --hosts with {settings.Nodes} host names (node 0 first), but {settings.Hosts.Count} were given.");
        }

        if (settings.MasterPort is < 1 or > 65535)
        {
            throw new ArgumentException($"--master-port {settings.MasterPort} is not a TCP port; expected 1–65535.");
        }

        if (settings.Command.Count == 0)
        {
            throw new ArgumentException("No command to run; give it after --, e.g. 'composersharp launch -n 2 -- train'.");
        }

        string I(int v) => v.ToString(CultureInfo.InvariantCulture);
        var args = new List<string> { settings.Mpirun };
        if (asRoot)
        {
            args.Add("--allow-run-as-root");
        }

        args.AddRange(new[] { "-np", I(settings.ProcessesPerNode * settings.Nodes), "--bind-to", "none" });
        if (settings.Nodes == 1)
        {
            // One machine: shared memory between the ranks, loopback for mpirun's own channel.
            args.AddRange(new[] { "--oversubscribe", "--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include", "lo" });
        }
        else
        {
            args.AddRange(new[] { "--host", string.Join(',', settings.Hosts.Select(h => $"{h}:{I(settings.ProcessesPerNode)}")), "--mca", "btl", "self,vader,tcp" });
        }

        args.AddRange(new[] { "-x", $"MASTER_ADDR={settings.MasterAddr}", "-x", $"MASTER_PORT={I(settings.MasterPort)}" });
        if (settings.Stdout is not null)
        {
            args.AddRange(new[] { "-x", $"COMPOSERSHARP_STDOUT={settings.Stdout}" });
        }

        if (settings.Stderr is not null)
        {
            args.AddRange(new[] { "-x", $"COMPOSERSHARP_STDERR={settings.Stderr}" });
        }

        args.AddRange(self);
        args.Add(RankCommand);
        args.Add("--");
        args.AddRange(settings.Command);
        return args;
    }

    /// <summary>The variables of Composer's contract for the rank described by Open MPI's <paramref name="get"/>.</summary>
    /// <exception cref="InvalidOperationException">The process was not started by mpirun.</exception>
    public static IReadOnlyDictionary<string, string> ContractVariables(Func<string, string?> get)
    {
        var env = ComposerSharp.Distributed.DistributedEnvironment.FromVariables(k => k.StartsWith("OMPI_", StringComparison.Ordinal) ? get(k) : null);
        if (env.Source != "ompi")
        {
            throw new InvalidOperationException($"'{RankCommand}' runs inside 'composersharp launch' (under mpirun); OMPI_COMM_WORLD_SIZE is not set.");
        }

        string I(int v) => v.ToString(CultureInfo.InvariantCulture);
        var vars = new Dictionary<string, string>
        {
            ["RANK"] = I(env.Rank),
            ["WORLD_SIZE"] = I(env.WorldSize),
            ["LOCAL_RANK"] = I(env.LocalRank),
            ["LOCAL_WORLD_SIZE"] = I(env.LocalWorldSize),
            ["NODE_RANK"] = I(env.NodeRank),
            ["MASTER_ADDR"] = get("MASTER_ADDR") ?? "127.0.0.1",
            ["MASTER_PORT"] = get("MASTER_PORT") ?? "29500",
        };
        if (get("CUDA_VISIBLE_DEVICES") is null)
        {
            // One GPU per rank, seen as cuda:0 (the NCCL backend uses the process's current device).
            vars["CUDA_VISIBLE_DEVICES"] = I(env.LocalRank);
        }

        return vars;
    }

    /// <summary>
    /// libtorch's intra-op threads for one rank: <c>OMP_NUM_THREADS</c> when it is set to a positive integer, else the
    /// machine's cores divided among its <paramref name="localWorldSize"/> ranks (at least 1), so that the ranks of a
    /// machine do not oversubscribe its cores (torchrun sets <c>OMP_NUM_THREADS=1</c> for the same reason).
    /// </summary>
    public static int ThreadsPerRank(string? ompNumThreads, int cores, int localWorldSize)
    {
        if (int.TryParse(ompNumThreads, NumberStyles.None, CultureInfo.InvariantCulture, out int fromEnv) && fromEnv > 0)
        {
            return fromEnv;
        }

        return Math.Max(1, cores / Math.Max(1, localWorldSize));
    }

    /// <summary>Fills a per-rank output pattern.</summary>
    public static string FormatRankPath(string pattern, IReadOnlyDictionary<string, string> vars) => pattern
        .Replace("{rank}", vars["RANK"], StringComparison.Ordinal)
        .Replace("{local_rank}", vars["LOCAL_RANK"], StringComparison.Ordinal)
        .Replace("{node_rank}", vars["NODE_RANK"], StringComparison.Ordinal)
        .Replace("{world_size}", vars["WORLD_SIZE"], StringComparison.Ordinal);

    private static int Launch(LaunchSettings settings, IReadOnlyList<string> self, bool asRoot)
    {
        IReadOnlyList<string> command = MpirunCommand(settings, self, asRoot);
        var psi = new ProcessStartInfo(command[0]) { UseShellExecute = false };
        foreach (string a in command.Skip(1))
        {
            psi.ArgumentList.Add(a);
        }

        try
        {
            using Process p = Process.Start(psi) ?? throw new InvalidOperationException("mpirun did not start.");
            p.WaitForExit();
            return p.ExitCode;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            Console.Error.WriteLine($"composersharp launch: cannot run '{command[0]}' ({e.Message}). Install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin) or pass --mpirun.");
            return 127;
        }
    }

    private static int RunRank(string[] command, TextWriter? output)
    {
        IReadOnlyDictionary<string, string> vars;
        try
        {
            vars = ContractVariables(Environment.GetEnvironmentVariable);
        }
        catch (InvalidOperationException e)
        {
            Console.Error.WriteLine($"composersharp {RankCommand}: {e.Message}");
            return 2;
        }

        foreach ((string key, string value) in vars)
        {
            Environment.SetEnvironmentVariable(key, value);
        }

        // The ranks of one machine share its cores: without this every rank would start one libtorch thread per core.
        int threads = ThreadsPerRank(Environment.GetEnvironmentVariable("OMP_NUM_THREADS"), Environment.ProcessorCount, int.Parse(vars["LOCAL_WORLD_SIZE"], CultureInfo.InvariantCulture));
        TorchSharp.torch.set_num_threads(threads);

        if (Environment.GetEnvironmentVariable("COMPOSERSHARP_STDOUT") is { Length: > 0 } outPattern)
        {
            output = Redirect(FormatRankPath(outPattern, vars));
            Console.SetOut(output);
        }

        if (Environment.GetEnvironmentVariable("COMPOSERSHARP_STDERR") is { Length: > 0 } errPattern)
        {
            Console.SetError(Redirect(FormatRankPath(errPattern, vars)));
        }

        return CliApp.Run(command, output);
    }

    private static StreamWriter Redirect(string path)
    {
        string full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        return new StreamWriter(full, append: false) { AutoFlush = true };
    }

    /// <summary>How to start this program again: the apphost, or <c>dotnet composersharp.dll</c>.</summary>
    private static IReadOnlyList<string> SelfCommand()
    {
        string process = Environment.ProcessPath ?? "dotnet";
        string? entry = Assembly.GetEntryAssembly()?.Location;
        return Path.GetFileNameWithoutExtension(process) == "dotnet" && entry is { Length: > 0 }
            ? new[] { process, entry }
            : new[] { process };
    }
}
