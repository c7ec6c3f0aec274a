using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Distributed;

/// <summary>
/// The gradient all-reduce of data-parallel training, in flattened buckets (PyTorch DDP's <c>Reducer</c>):
/// parameters in reverse order (the order in which backward completes their gradients), grouped into buckets of at
/// most <c>bucketBytes</c> of one dtype and device; each bucket is one contiguous buffer allocated once, so one
/// collective moves many small gradients. Per step: copy the gradients in (<see cref="CopyIn"/>, optionally
/// multiplied by this rank's weight), all-reduce SUM, then <see cref="CopyOut"/> (multiply by the normaliser, copy
/// back). A parameter without a gradient on this rank contributes zeros (DDP's <c>find_unused_parameters</c>
/// behaviour): when another rank has a gradient for it (<see cref="LocalUsed"/> combined over ranks), it receives
/// the reduced one; when no rank has one it is left without, as on one process.
/// </summary>
internal sealed class GradientBuckets : IDisposable
{
    private readonly List<Bucket> _buckets;

    private GradientBuckets(List<Bucket> buckets) => _buckets = buckets;

    /// <summary>The buckets' sizes in elements (for tests and logs).</summary>
    public IReadOnlyList<long> BucketElements => _buckets.Select(b => b.Flat.numel()).ToList();

    /// <summary>The number of buckets.</summary>
    public int Count => _buckets.Count;

    /// <summary>The parameters, in the order they were given.</summary>
    public IReadOnlyList<Parameter> Parameters { get; private init; } = Array.Empty<Parameter>();

    /// <summary>
    /// Plans buckets for <paramref name="parameters"/> (in model order; they are bucketed in reverse), the first of at
    /// most min(<see cref="DistributedDefaults.FirstBucketBytes"/>, <paramref name="bucketBytes"/>) bytes, the others of
    /// at most <paramref name="bucketBytes"/> (a parameter larger than the cap gets a bucket of its own).
    /// </summary>
    public static GradientBuckets Build(IReadOnlyList<Parameter> parameters, long bucketBytes)
    {
        long firstCap = Math.Min(DistributedDefaults.FirstBucketBytes, bucketBytes);
        var buckets = new List<Bucket>();
        var current = new List<int>();
        long bytes = 0;
        void Close()
        {
            if (current.Count == 0)
            {
                return;
            }

            Parameter first = parameters[current[0]];
            long total = current.Sum(i => parameters[i].numel());
            Tensor flat = torch.zeros(total, dtype: first.dtype, device: first.device).DetachFromDisposeScope();
            buckets.Add(new Bucket(flat, current.Select(i => parameters[i]).ToArray(), current.ToArray()));
            current = new List<int>();
            bytes = 0;
        }

        for (int i = parameters.Count - 1; i >= 0; i--)
        {
            Parameter p = parameters[i];
            long size = p.numel() * TensorMemory.ElementSize(p.dtype);
            Parameter? head = current.Count > 0 ? parameters[current[0]] : null;
            if (head is not null && (head.dtype != p.dtype || !SameDevice(head.device, p.device) || bytes + size > (buckets.Count == 0 ? firstCap : bucketBytes)))
            {
                Close();
            }

            current.Add(i);
            bytes += size;
        }

        Close();
        return new GradientBuckets(buckets) { Parameters = parameters };
    }

    /// <summary>The flat buffer of bucket <paramref name="bucket"/> (1-D, the parameters' dtype).</summary>
    public Tensor Flat(int bucket) => _buckets[bucket].Flat;

    /// <summary>The parameters of bucket <paramref name="bucket"/>, in bucket order.</summary>
    public IReadOnlyList<Parameter> BucketParameters(int bucket) => _buckets[bucket].Params;

    /// <summary>The indices into <see cref="Parameters"/> of bucket <paramref name="bucket"/>'s parameters.</summary>
    public IReadOnlyList<int> BucketIndices(int bucket) => _buckets[bucket].Indices;

    /// <summary>Whether each parameter (in <see cref="Parameters"/> order) has a gradient on this rank.</summary>
    public bool[] LocalUsed()
    {
        using var scope = torch.NewDisposeScope();
        return Parameters.Select(p => p.grad is not null).ToArray();
    }

    /// <summary>Fills <paramref name="target"/> (the bucket's size) with the bucket's local gradients (zeros where none) times <paramref name="preScale"/>.</summary>
    public void CopyIn(int bucket, double preScale, Tensor? target = null)
    {
        Bucket b = _buckets[bucket];
        Tensor flat = target ?? b.Flat;
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        long offset = 0;
        foreach (Parameter p in b.Params)
        {
            long n = p.numel();
            Tensor segment = flat.narrow(0, offset, n);
            Tensor? grad = p.grad;
            if (grad is null)
            {
                segment.zero_();
            }
            else
            {
                segment.copy_(grad.reshape(-1));
            }

            offset += n;
        }

        if (preScale != 1.0)
        {
            flat.mul_(preScale);
        }
    }

    /// <summary>
    /// Multiplies the reduced bucket by <paramref name="postScale"/> and copies it into the gradients; a parameter
    /// without a gradient gets one when <paramref name="globallyUsed"/> says some rank had one.
    /// </summary>
    public void CopyOut(int bucket, double postScale, bool[] globallyUsed)
    {
        Bucket b = _buckets[bucket];
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        if (postScale != 1.0)
        {
            b.Flat.mul_(postScale);
        }

        long offset = 0;
        for (int i = 0; i < b.Params.Length; i++)
        {
            Parameter p = b.Params[i];
            long n = p.numel();
            Tensor reduced = b.Flat.narrow(0, offset, n).view(p.shape);
            Tensor? grad = p.grad;
            if (grad is not null)
            {
                grad.copy_(reduced);
            }
            else if (globallyUsed[b.Indices[i]])
            {
                p.grad = reduced.clone();
            }

            offset += n;
        }
    }

    /// <summary>
    /// Replaces every gradient g_r by postScale · Σ_ranks (preScale_r · g_r), one blocking collective per bucket.
    /// </summary>
    /// <param name="group">The ranks.</param>
    /// <param name="preScale">This rank's weight (1 to skip the multiplication).</param>
    /// <param name="postScale">The normaliser applied to the sum.</param>
    /// <param name="globallyUsed">Per parameter, whether any rank has a gradient (see <see cref="LocalUsed"/>).</param>
    public void AllReduce(IProcessGroup group, double preScale, double postScale, bool[] globallyUsed)
    {
        for (int b = 0; b < _buckets.Count; b++)
        {
            CopyIn(b, preScale);
            group.AllReduce(_buckets[b].Flat, ReduceOp.Sum);
            CopyOut(b, postScale, globallyUsed);
        }
    }

    /// <summary>Frees the bucket buffers.</summary>
    public void Dispose()
    {
        foreach (Bucket bucket in _buckets)
        {
            bucket.Flat.Dispose();
        }

        _buckets.Clear();
    }

    private static bool SameDevice(Device a, Device b) => a.type == b.type && a.index == b.index;

    private sealed record Bucket(Tensor Flat, Parameter[] Params, int[] Indices);
}
