using System.Globalization;

namespace ComposerSharp.Distributed;

/// <summary>
/// Where this process sits in the job, read from the environment. Two sources are understood: Composer's launcher
/// contract (<c>RANK</c>, <c>WORLD_SIZE</c>, <c>LOCAL_RANK</c>, <c>LOCAL_WORLD_SIZE</c>, <c>NODE_RANK</c>,
/// <c>MASTER_ADDR</c>, <c>MASTER_PORT</c>; composer/cli/launcher.py) and Open MPI's
/// (<c>OMPI_COMM_WORLD_RANK</c>, <c>_SIZE</c>, <c>_LOCAL_RANK</c>, <c>_LOCAL_SIZE</c>, set by <c>mpirun</c>; the node
/// index is derived from them). When both are present they must agree. With neither, the process is alone (world size 1).
/// </summary>
/// <param name="Rank">Global rank.</param>
/// <param name="WorldSize">Number of processes.</param>
/// <param name="LocalRank">Rank on this node.</param>
/// <param name="LocalWorldSize">Processes on this node.</param>
/// <param name="NodeRank">Index of this node.</param>
/// <param name="MasterAddr">Address of rank 0's node (<c>MASTER_ADDR</c>), or null.</param>
/// <param name="MasterPort">Port on rank 0's node (<c>MASTER_PORT</c>), or null.</param>
/// <param name="Source">Which variables were read: <c>none</c>, <c>composer</c>, <c>ompi</c> or <c>composer+ompi</c>.</param>
public sealed record DistributedEnvironment(
    int Rank,
    int WorldSize,
    int LocalRank,
    int LocalWorldSize,
    int NodeRank,
    string? MasterAddr,
    int? MasterPort,
    string Source)
{
    /// <summary>A process on its own.</summary>
    public static DistributedEnvironment Single { get; } = new(0, 1, 0, 1, 0, null, null, "none");

    /// <summary>Reads the current process's environment variables.</summary>
    /// <exception cref="InvalidOperationException">A variable is not an integer in range, or the two sources disagree.</exception>
    public static DistributedEnvironment FromProcess() => FromVariables(Environment.GetEnvironmentVariable);

    /// <summary>Reads the variables through <paramref name="get"/> (null for an unset variable).</summary>
    /// <exception cref="InvalidOperationException">A variable is not an integer in range, or the two sources disagree.</exception>
    public static DistributedEnvironment FromVariables(Func<string, string?> get)
    {
        ArgumentNullException.ThrowIfNull(get);
        int? ompiSize = ReadInt(get, "OMPI_COMM_WORLD_SIZE", 1);
        int? size = ReadInt(get, "WORLD_SIZE", 1);
        string? addr = get("MASTER_ADDR") is { Length: > 0 } a ? a : null;
        int? port = ReadInt(get, "MASTER_PORT", 0);
        if (port is > 65535)
        {
            throw new InvalidOperationException($"MASTER_PORT='{port}' is not a TCP port; expected an integer in [0, 65535].");
        }

        DistributedEnvironment? composer = size is { } w ? Read(get, w, "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", addr, port, "composer") : null;
        // Open MPI's OMPI_COMM_WORLD_NODE_RANK is a rank among the node's processes, not a node index: the node index
        // is derived from the block mapping mpirun uses by default (ranks 0 … L−1 on the first node, and so on).
        DistributedEnvironment? ompi = ompiSize is { } ow ? Read(get, ow, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", null, addr, port, "ompi") : null;
        if (composer is null && ompi is null)
        {
            return Single with { MasterAddr = addr, MasterPort = port };
        }

        if (composer is null || ompi is null)
        {
            return composer ?? ompi!;
        }

        (string Name, int A, int B)[] pairs =
        {
            ("WORLD_SIZE / OMPI_COMM_WORLD_SIZE", composer.WorldSize, ompi.WorldSize),
            ("RANK / OMPI_COMM_WORLD_RANK", composer.Rank, ompi.Rank),
            ("LOCAL_RANK / OMPI_COMM_WORLD_LOCAL_RANK", composer.LocalRank, ompi.LocalRank),
            ("LOCAL_WORLD_SIZE / OMPI_COMM_WORLD_LOCAL_SIZE", composer.LocalWorldSize, ompi.LocalWorldSize),
        };
        foreach ((string name, int x, int y) in pairs)
        {
            if (x != y)
            {
                throw new InvalidOperationException(
                    $"The launcher's and Open MPI's variables disagree: {name} = {x} / {y}. Start the job either with 'composersharp launch' or with mpirun, and do not set RANK/WORLD_SIZE by hand.");
            }
        }

        // NODE_RANK is ours to give (Open MPI numbers nodes by its own host order); keep the launcher's value.
        return composer with { Source = "composer+ompi" };
    }

    private static DistributedEnvironment Read(Func<string, string?> get, int worldSize, string rankName, string localRankName, string localSizeName, string? nodeRankName, string? addr, int? port, string source)
    {
        int rank = ReadInt(get, rankName, 0) ?? throw new InvalidOperationException($"{rankName} is not set although the world size is {worldSize}; the launcher sets both.");
        if (rank >= worldSize)
        {
            throw new InvalidOperationException($"{rankName}={rank} is not below the world size {worldSize}; expected an integer in [0, {worldSize}).");
        }

        int localSize = ReadInt(get, localSizeName, 1) ?? worldSize;
        int localRank = ReadInt(get, localRankName, 0) ?? rank % localSize;
        if (localRank >= localSize)
        {
            throw new InvalidOperationException($"{localRankName}={localRank} is not below the local world size {localSize}.");
        }

        int nodeRank = (nodeRankName is null ? null : ReadInt(get, nodeRankName, 0)) ?? (rank - localRank) / localSize;
        return new DistributedEnvironment(rank, worldSize, localRank, localSize, nodeRank, addr, port, source);
    }

    private static int? ReadInt(Func<string, string?> get, string name, int minimum)
    {
        string? text = get(name);
        if (string.IsNullOrWhiteSpace(text))
        {
            return null;
        }

        if (!int.TryParse(text.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) || value < minimum)
        {
            throw new InvalidOperationException($"{name}='{text}' is not valid; expected an integer ≥ {minimum}.");
        }

        return value;
    }
}
