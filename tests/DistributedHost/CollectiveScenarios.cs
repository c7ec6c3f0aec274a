using ComposerSharp.Distributed;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.DistributedHost;

/// <summary>Collectives checked against float64 references computed from every rank's (known) inputs.</summary>
public static class CollectiveScenarios
{
    /// <summary>Every op, dtype, staging path and the chunk split; writes the number of checks passed.</summary>
    public static void Run(ScenarioContext c)
    {
        IProcessGroup g = c.Group;
        int w = g.WorldSize;
        int checks = 0;

        // Fresh random inputs, the same generator on every rank, a different stream per rank.
        Tensor Input(int rank, long n, ScalarType type)
        {
            using var gen = new Generator(1234 + (ulong)rank);
            Tensor x = torch.randn(new[] { n }, generator: gen, dtype: ScalarType.Float64);
            return type is ScalarType.Int64 or ScalarType.Int32 ? (x * 100).round().to(type) : x.to(type);
        }

        void Expect(Tensor actual, Tensor expected, double tol, string what)
        {
            double err = (actual.to(ScalarType.Float64) - expected).abs().max().item<double>();
            if (!(err <= tol))
            {
                throw new CheckFailedException($"{what}: max |error| {err} > {tol}");
            }

            checks++;
        }

        foreach ((ScalarType type, double tol) in new[] { (ScalarType.Float32, 1e-5), (ScalarType.Float64, 1e-12), (ScalarType.Int64, 0.0), (ScalarType.Int32, 0.0), (ScalarType.BFloat16, 0.05), (ScalarType.Float16, 0.01) })
        {
            Tensor[] all = Enumerable.Range(0, w).Select(r => Input(r, 1000, type).to(ScalarType.Float64)).ToArray();
            Tensor stack = torch.stack(all);
            foreach (ReduceOp op in new[] { ReduceOp.Sum, ReduceOp.Avg, ReduceOp.Max, ReduceOp.Min })
            {
                Tensor mine = Input(g.Rank, 1000, type);
                g.AllReduce(mine, op);
                Tensor expected = op switch
                {
                    ReduceOp.Sum => stack.sum(new long[] { 0 }),
                    ReduceOp.Avg => type is ScalarType.Int64 or ScalarType.Int32 ? stack.sum(new long[] { 0 }).div(w, RoundingMode.trunc) : stack.sum(new long[] { 0 }) / w,
                    ReduceOp.Max => stack.amax(0),
                    _ => stack.amin(0),
                };
                if (type is ScalarType.BFloat16 or ScalarType.Float16)
                {
                    expected = expected.to(type).to(ScalarType.Float64);
                }

                Expect(mine, expected, tol * Math.Max(1, expected.abs().max().item<double>()), $"all_reduce {op} {type}");
                if (mine.dtype != type)
                {
                    throw new CheckFailedException($"all_reduce changed the dtype {type} to {mine.dtype}");
                }
            }
        }

        // Non-contiguous: the transpose of a [4, 6] tensor; the result lands in the same view.
        {
            Tensor Matrix(int r) => Input(r, 24, ScalarType.Float32).reshape(4, 6).t();
            Tensor view = Matrix(g.Rank);
            g.AllReduce(view, ReduceOp.Sum);
            Tensor expected = Enumerable.Range(0, w).Select(r => Matrix(r).to(ScalarType.Float64)).Aggregate((a, b) => a + b);
            Expect(view, expected, 1e-5, "all_reduce of a non-contiguous view");
        }

        // Broadcast from the last rank, contiguous and not.
        {
            int root = w - 1;
            Tensor t = Input(g.Rank, 500, ScalarType.Float32);
            g.Broadcast(t, root);
            Expect(t, Input(root, 500, ScalarType.Float32).to(ScalarType.Float64), 0, "broadcast");
            Tensor strided = Input(g.Rank, 500, ScalarType.Float64).reshape(25, 20).t();
            g.Broadcast(strided, root);
            Expect(strided, Input(root, 500, ScalarType.Float64).reshape(25, 20).t(), 0, "broadcast of a non-contiguous view");
        }

        // All-gather: row r is rank r's tensor.
        {
            Tensor gathered = g.AllGather(Input(g.Rank, 30, ScalarType.Float32).reshape(5, 6));
            if (!gathered.shape.SequenceEqual(new long[] { w, 5, 6 }))
            {
                throw new CheckFailedException($"all_gather shape [{string.Join(", ", gathered.shape)}]");
            }

            for (int r = 0; r < w; r++)
            {
                Expect(gathered[r], Input(r, 30, ScalarType.Float32).reshape(5, 6).to(ScalarType.Float64), 0, $"all_gather row {r}");
            }
        }

        // Counts above the chunk limit: the limit is lowered to 7 elements so 100 elements take 15 calls.
        if (g is MpiProcessGroup mpi)
        {
            mpi.MaxChunk = 7;
            Tensor t = Input(g.Rank, 100, ScalarType.Float64);
            g.AllReduce(t, ReduceOp.Sum);
            Expect(t, Enumerable.Range(0, w).Select(r => Input(r, 100, ScalarType.Float64)).Aggregate((a, b) => a + b), 1e-12, "chunked all_reduce");
            Tensor b = Input(g.Rank, 100, ScalarType.Float32);
            g.Broadcast(b, 0);
            Expect(b, Input(0, 100, ScalarType.Float32).to(ScalarType.Float64), 0, "chunked broadcast");
            Tensor gathered = g.AllGather(Input(g.Rank, 100, ScalarType.Float32));
            Expect(gathered[w - 1], Input(w - 1, 100, ScalarType.Float32).to(ScalarType.Float64), 0, "chunked all_gather");
            mpi.MaxChunk = int.MaxValue;
        }

        g.Barrier();
        File.WriteAllText(c.RankFile("checks"), checks.ToString(System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>Rank 1 throws after the first collective; rank 0 goes on to wait in the next one.</summary>
    public static void Throw(ScenarioContext c)
    {
        using Tensor t = torch.ones(10);
        c.Group.AllReduce(t);
        if (c.Group.Rank == 1)
        {
            throw new InvalidOperationException("rank 1 fails on purpose");
        }

        c.Group.AllReduce(t);
        c.Group.Barrier();
    }

    /// <summary>Rank 1 stops calling collectives (sleeps); rank 0's watchdog must end the job after the timeout.</summary>
    public static void Hang(ScenarioContext c)
    {
        using Tensor t = torch.ones(10);
        if (c.Group.Rank == 1)
        {
            Thread.Sleep(TimeSpan.FromMinutes(5));
        }

        c.Group.AllReduce(t);
    }
}
