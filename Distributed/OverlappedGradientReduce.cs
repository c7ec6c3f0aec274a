using Microsoft.Extensions.Logging;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Distributed;

/// <summary>
/// Overlaps the gradient all-reduce with backward (PyTorch DDP's <c>Reducer</c> with its autograd hooks): a bucket's
/// non-blocking all-reduce (<see cref="IProcessGroup.StartAllReduce"/>, <c>MPI_Iallreduce</c>) starts as soon as
/// every parameter in it has its gradient, while backward goes on through earlier layers.
/// <para>
/// TorchSharp 0.107 has no per-tensor gradient hook (<c>register_hook</c>), so readiness is observed per module: a
/// forward pre-hook on every <c>Module&lt;Tensor, Tensor&gt;</c> that directly owns parameters passes the module's
/// input through <see cref="GradientReadySignal"/> (an identity autograd function). libtorch runs that function's
/// backward after the module's own backward, whose weight-gradient accumulations (AccumulateGrad nodes, the highest
/// priority in the CPU engine's ready queue) have then run. A parameter is ready once every module owning it has seen
/// all its calls of the step come back; buckets start strictly in bucket order (the same order on every rank, as MPI
/// requires). Buckets not ready by the end of backward (e.g. the first layer, whose input needs no gradient, or
/// modules that did not run) start after it. <see cref="Finish"/> waits for all before the optimizer step.
/// </para>
/// <para>
/// The reduced values are those of the blocking path (<see cref="GradientBuckets.AllReduce"/>): the same buckets,
/// copies and scalings; the all-reduce itself is Open MPI's non-blocking algorithm, which for 2 ranks adds the same
/// two numbers. On the first step the copies made during backward are checked bitwise against the final gradients;
/// if any differs (a graph where a parameter is also used by a module that runs its backward later, e.g. weights
/// tied to an earlier layer) every rank agrees to reduce that step again without overlap and keeps it off, with a
/// warning.
/// </para>
/// </summary>
internal sealed class OverlappedGradientReduce : IDisposable
{
    private readonly GradientBuckets _buckets;
    private readonly IProcessGroup _group;
    private readonly ILogger _log;
    private readonly List<Action> _removeHooks = new();
    private readonly List<int[]> _moduleParams = new();
    private readonly int[] _ownerCount;
    private readonly int[] _bucketOf;
    private readonly int[] _pendingOwners;
    private readonly int[] _bucketPending;
    private readonly int[] _pendingCalls;
    private readonly bool[] _blocked;
    private readonly ICollectiveWork?[] _works;
    private readonly Tensor?[] _check;
    private bool _armed;
    private bool _validate = true;
    private int _next;
    private double _preScale = 1.0;
    private double _postScale = 1.0;

    /// <summary>Hooks the modules of <paramref name="model"/> that own parameters of <paramref name="buckets"/>.</summary>
    public OverlappedGradientReduce(nn.Module model, GradientBuckets buckets, IProcessGroup group, ILogger log)
    {
        _buckets = buckets;
        _group = group;
        _log = log;
        int n = buckets.Parameters.Count;
        var indexOf = new Dictionary<IntPtr, int>();
        for (int i = 0; i < n; i++)
        {
            indexOf[TensorMemory.DataPointer(buckets.Parameters[i])] = i;
        }

        _ownerCount = new int[n];
        _bucketOf = new int[n];
        for (int b = 0; b < buckets.Count; b++)
        {
            foreach (int i in buckets.BucketIndices(b))
            {
                _bucketOf[i] = b;
            }
        }

        foreach (nn.Module module in model.modules().Prepend(model).Distinct())
        {
            if (module is not nn.Module<Tensor, Tensor> tensorModule)
            {
                continue;
            }

            int[] owned = module.named_parameters(recurse: false)
                .Select(p => indexOf.TryGetValue(TensorMemory.DataPointer(p.parameter), out int i) ? i : -1)
                .Where(i => i >= 0).Distinct().ToArray();
            if (owned.Length == 0)
            {
                continue;
            }

            int m = _moduleParams.Count;
            _moduleParams.Add(owned);
            foreach (int i in owned)
            {
                _ownerCount[i]++;
            }

            Action signal = () => OnModuleBackward(m);
            var remover = tensorModule.register_forward_pre_hook((_, input) => OnModuleForward(m, input, signal));
            _removeHooks.Add(remover.remove);
        }

        _pendingOwners = new int[n];
        _bucketPending = new int[buckets.Count];
        _pendingCalls = new int[_moduleParams.Count];
        _blocked = new bool[_moduleParams.Count];
        _works = new ICollectiveWork?[buckets.Count];
        _check = new Tensor?[buckets.Count];
    }

    /// <summary>Whether overlap is still in use (false after the first-step check failed).</summary>
    public bool Active { get; private set; } = true;

    /// <summary>The number of hooked modules.</summary>
    public int HookedModules => _moduleParams.Count;

    /// <summary>The number of buckets whose all-reduce started during the last backward (for tests and benchmarks).</summary>
    public int LastEarlyBuckets { get; private set; }

    /// <summary>Whether <see cref="Arm"/> was called and <see cref="Finish"/> not yet.</summary>
    public bool Armed => _armed;

    /// <summary>Watches the next forward and backward (the step's last microbatch) with this rank's scales.</summary>
    public void Arm(double preScale, double postScale)
    {
        _preScale = preScale;
        _postScale = postScale;
        Array.Copy(_ownerCount, _pendingOwners, _ownerCount.Length);
        for (int b = 0; b < _buckets.Count; b++)
        {
            _bucketPending[b] = _buckets.BucketIndices(b).Count;
            _works[b] = null;
        }

        Array.Clear(_pendingCalls);
        Array.Clear(_blocked);
        _next = 0;
        _armed = true;
    }

    /// <summary>
    /// After backward: starts the buckets not yet started, agrees on which parameters have gradients on any rank,
    /// waits for every bucket and copies the results into the gradients.
    /// </summary>
    public void Finish(Func<bool[], bool[]> globallyUsed, Func<bool, bool> anyRank)
    {
        _armed = false;
        int early = _next;
        LastEarlyBuckets = early;
        while (_next < _buckets.Count)
        {
            Launch(_next++, early: false);
        }

        bool[] used = globallyUsed(_buckets.LocalUsed());
        bool mismatch = false;
        if (_validate)
        {
            using var scope = torch.NewDisposeScope();
            for (int b = 0; b < _buckets.Count; b++)
            {
                if (_check[b] is { } expected)
                {
                    Tensor now = torch.empty_like(expected);
                    _buckets.CopyIn(b, _preScale, now);
                    if (!now.eq(expected).logical_or(now.isnan().logical_and(expected.isnan())).all().item<bool>())
                    {
                        mismatch = true;
                        _log.LogWarning("Gradient bucket {Bucket} changed after its all-reduce started during backward (its parameters are used by a module whose backward runs later); the all-reduce is no longer overlapped with backward.", b);
                    }

                    expected.Dispose();
                    _check[b] = null;
                }
            }
        }

        bool redo = _validate && anyRank(mismatch);
        _validate = false;
        foreach (ICollectiveWork? work in _works)
        {
            work!.Wait();
        }

        if (redo)
        {
            Dispose();
            _buckets.AllReduce(_group, _preScale, _postScale, used);
            return;
        }

        for (int b = 0; b < _buckets.Count; b++)
        {
            _buckets.CopyOut(b, _postScale, used);
        }
    }

    /// <summary>Removes the hooks; overlap stays off.</summary>
    public void Dispose()
    {
        Active = false;
        _armed = false;
        foreach (Action remove in _removeHooks)
        {
            remove();
        }

        _removeHooks.Clear();
        foreach (Tensor? t in _check)
        {
            t?.Dispose();
        }
    }

    private Tensor OnModuleForward(int m, Tensor input, Action signal)
    {
        if (!_armed)
        {
            return input;
        }

        if (!torch.is_grad_enabled() || !input.requires_grad)
        {
            // This call's backward cannot be observed (e.g. the first layer, whose input needs no gradient): its
            // parameters wait for the end of backward.
            _blocked[m] = true;
            return input;
        }

        _pendingCalls[m]++;
        return GradientReadySignal.apply(input, signal);
    }

    private void OnModuleBackward(int m)
    {
        if (!_armed || _blocked[m] || --_pendingCalls[m] != 0)
        {
            return;
        }

        foreach (int i in _moduleParams[m])
        {
            if (--_pendingOwners[i] == 0)
            {
                _bucketPending[_bucketOf[i]]--;
            }
        }

        while (_next < _buckets.Count && _bucketPending[_next] == 0)
        {
            Launch(_next++, early: true);
        }

        foreach (ICollectiveWork? work in _works)
        {
            work?.Test(); // Open MPI progresses non-blocking collectives only inside MPI calls
        }
    }

    private void Launch(int b, bool early)
    {
        _buckets.CopyIn(b, _preScale);
        if (_validate && early)
        {
            _check[b] = _buckets.Flat(b).clone().DetachFromDisposeScope();
        }

        _works[b] = _group.StartAllReduce(_buckets.Flat(b), ReduceOp.Sum);
    }
}

/// <summary>
/// The identity as an autograd function (forward copies the input, backward passes the gradient through unchanged)
/// whose backward calls the <see cref="Action"/> given as its second argument: the point at which a module's
/// backward has finished. vars: input tensor, signal.
/// </summary>
internal sealed class GradientReadySignal : autograd.SingleTensorFunction<GradientReadySignal>
{
    /// <inheritdoc />
    public override string Name => "GradientReadySignal";

    /// <summary>Returns a copy of vars[0] and keeps vars[1] (an <see cref="Action"/>) for backward.</summary>
    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        ctx.save_data("signal", vars[1]);
        return ((Tensor)vars[0]).clone();
    }

    /// <summary>Calls the signal, then returns the incoming gradient as the input's (and none for the signal).</summary>
    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
    {
        ((Action)ctx.get_data("signal"))();
        return new List<Tensor> { grad_output.alias(), null! };
    }
}
